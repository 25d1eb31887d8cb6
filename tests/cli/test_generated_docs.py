"""The committed completions and man pages are in step with the commands, they work, and
every command documents itself with an example (issue 8, SPEC "Shell")."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lbk.cli.main import _register, cli, run

ROOT = Path(__file__).resolve().parents[2]
REGEN = "run `python scripts/gen_docs.py` and commit the result"
LBK_BIN = Path(sys.executable).parent / "lbk"  # the installed console script of this venv

# Commands whose --help has no "Example:" block yet: (path) -> reason. Remove an entry
# when its example lands (strict xfail turns a fixed one into a failure as a reminder).
MISSING_EXAMPLE: dict[str, str] = {}


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen_docs():
    return _gen_docs()


@pytest.fixture(scope="module")
def generated(gen_docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_docs")
    files = gen_docs.generate()
    gen_docs.write(out, files)
    return out, files


def _all_commands() -> list[tuple[str, ...]]:
    _register()
    found: list[tuple[str, ...]] = [()]

    def walk(group: click.Group, prefix: tuple[str, ...]):
        ctx = click.Context(group, info_name=prefix[-1] if prefix else "lbk")
        for name in sorted(group.list_commands(ctx)):
            cmd = group.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            found.append(prefix + (name,))
            if isinstance(cmd, click.Group):
                walk(cmd, prefix + (name,))

    walk(cli, ())
    return found


# --------------------------------------------------------------------------- (a) up to date


def test_generator_is_deterministic(gen_docs):
    assert gen_docs.generate() == gen_docs.generate()


def test_committed_docs_are_up_to_date(generated):
    out, files = generated
    expected = {"completions/lbk.bash", "completions/lbk.zsh", "completions/lbk.fish", "man/lbk.1",
                "man/lbk-backup.1", "man/lbk-key.1", "man/lbk-key-add.1", "man/lbk-completion.1"}
    assert expected <= set(files)
    problems = []
    for rel in sorted(files):
        committed = ROOT / rel
        if not committed.is_file():
            problems.append(f"missing: {rel}")
        elif committed.read_text(encoding="utf-8") != (out / rel).read_text(encoding="utf-8"):
            problems.append(f"out of date: {rel}")
    for pattern in ("completions/lbk.*", "man/lbk*.1"):
        for p in sorted(ROOT.glob(pattern)):
            if str(p.relative_to(ROOT)) not in files:
                problems.append(f"stale (no such command any more): {p.relative_to(ROOT)}")
    assert not problems, "generated docs differ from the commands; " + REGEN + ":\n  " + "\n  ".join(problems)


def test_one_man_page_per_command(generated):
    _, files = generated
    pages = {rel for rel in files if rel.startswith("man/")}
    want = {"man/" + "-".join(("lbk",) + path) + ".1" for path in _all_commands()}
    assert pages == want


def test_man_page_sections(generated):
    _, files = generated
    page = files["man/lbk-backup.1"]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "GLOBAL OPTIONS", "EXAMPLES",
                    "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page, section
    assert "\\-\\-exclude\\-file" in page and "Read exclude patterns from FILE." in page
    assert "lbk backup ~/Documents \\-\\-exclude '*.iso' \\-\\-tag daily" in page
    for code in (0, 1, 2, 3, 10, 11, 12, 130):
        assert f".TP\n\\fB{code}\\fR\n" in page
    assert "\\fBlbk\\-key\\-add\\fR(1)" in files["man/lbk-key.1"]
    assert '.TH "LBK\\-KEY\\-ADD" "1"' in files["man/lbk-key-add.1"]


# --------------------------------------------------------------------------- (b) completion


def test_completion_command_prints_the_committed_scripts(capsys):
    for shell in ("bash", "zsh", "fish"):
        assert run(["completion", shell]) == 0
        assert capsys.readouterr().out == (ROOT / "completions" / f"lbk.{shell}").read_text()
    assert run(["completion", "tcsh"]) == 2


def _bash() -> str:
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash is not installed")
    return bash


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{LBK_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("_LBK_COMPLETE", "COMP_WORDS", "COMP_CWORD"):
        env.pop(var, None)
    return env


def test_bash_completion_script_loads():
    r = subprocess.run([_bash(), "-c", "source completions/lbk.bash && complete -p lbk"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "_lbk_completion" in r.stdout and r.stdout.rstrip().endswith(" lbk")


@pytest.mark.parametrize(
    "words, cword, want",
    [
        ("lbk ba", 1, {"backup"}),
        ("lbk ch", 1, {"check", "checkpoint"}),
        ('lbk key ""', 2, {"add", "list", "passwd", "remove"}),
        ('lbk completion ""', 2, {"bash", "zsh", "fish"}),
    ],
)
def test_bash_completion_completes_subcommands(words, cword, want):
    """Source the committed script and call its completion function the way bash does
    (COMP_WORDS/COMP_CWORD set, the command name as $1); it calls back into the
    installed lbk with _LBK_COMPLETE=bash_complete."""
    assert LBK_BIN.exists(), f"console script not installed at {LBK_BIN}"
    script = (
        "source completions/lbk.bash\n"
        f"COMP_WORDS=({words})\n"
        f"COMP_CWORD={cword}\n"
        "COMPREPLY=()\n"
        "_lbk_completion lbk\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run([_bash(), "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = {x for x in r.stdout.split("\n") if x}
    assert got == want, (got, r.stderr)


def test_click_completion_protocol_against_installed_lbk():
    assert LBK_BIN.exists(), f"console script not installed at {LBK_BIN}"
    env = _env() | {"_LBK_COMPLETE": "bash_complete", "COMP_WORDS": "lbk ba", "COMP_CWORD": "1"}
    r = subprocess.run([str(LBK_BIN)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["plain,backup"]


# --------------------------------------------------------------------------- (c) man renders


def test_man_pages_render_without_warnings(generated):
    groff = shutil.which("groff")
    if not groff:
        pytest.skip("groff is not installed (`which groff` found nothing)")
    out, files = generated
    pages = sorted(rel for rel in files if rel.startswith("man/"))
    problems = []
    for rel in pages:
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(out / rel)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0 or r.stderr.strip():
            problems.append(f"{rel}: rc={r.returncode} {r.stderr.strip()}")
    assert not problems, "\n".join(problems)
    # and the text that comes out is the page we meant
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", str(out / "man/lbk-backup.1")],
                       capture_output=True, timeout=30, env=os.environ | {"LC_ALL": "C.UTF-8"})
    text = re.sub(r".\x08", "", r.stdout.decode("utf-8", "replace"))  # drop overstrike bold/underline
    for s in ("lbk-backup - Back up PATHS into one snapshot", "--one-file-system", "EXIT STATUS",
              "lbk backup ~/Documents --exclude '*.iso' --tag daily"):
        assert s in text, s


# --------------------------------------------------------------------------- (d) --help


def _help_params():
    params = []
    for path in _all_commands():
        name = " ".join(("lbk",) + path)
        marks = []
        if name in MISSING_EXAMPLE:
            marks.append(pytest.mark.xfail(strict=True, reason=MISSING_EXAMPLE[name]))
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("path", _help_params())
def test_help_has_summary_options_and_example(path, capsys):
    for flag in ("--help", "-h"):
        assert run(list(path) + [flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage: lbk"), out[:200]
        assert "Options:" in out
        assert "Example" in out, f"'lbk {' '.join(path)} --help' has no Example block"
