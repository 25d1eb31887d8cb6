"""Shell completion of REFs (snapshot ids, ``latest``, ``@name``) from the local cache,
through the committed completion scripts and click's protocol, against real
repositories: no password, no repository access, no network, no error."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lbk.backend.local import LocalBackend
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, save_snapshot
from tests.helpers import PASSWORD, need

ROOT = Path(__file__).resolve().parents[2]
LBK_BIN = Path(sys.executable).parent / "lbk"  # the installed console script of this venv
MiB = 1 << 20


def child_env(**extra: str | None) -> dict[str, str]:
    """The test's environment (LBK_CACHE_DIR, XDG dirs from lbk_env) for a completion
    process: lbk on PATH, no password source at all, no leftover completion variables."""
    env = dict(os.environ)
    env["PATH"] = f"{LBK_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("_LBK_COMPLETE", "COMP_WORDS", "COMP_CWORD", "LBK_PASSWORD", "LBK_PASSWORD_FILE",
                "LBK_PASSWORD_COMMAND", "LBK_REPOSITORY"):
        env.pop(var, None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def bash_complete(words: str, env: dict | None = None) -> tuple[list[str], subprocess.CompletedProcess]:
    """Complete the last word of ``words`` as bash does with completions/lbk.bash loaded:
    COMP_WORDS/COMP_CWORD set and the completion function called; returns COMPREPLY."""
    bash = shutil.which("bash")
    need(bash is not None, "bash is not installed")
    assert LBK_BIN.exists(), f"console script not installed at {LBK_BIN}"
    parts = words.split(" ")
    script = (
        "source completions/lbk.bash\n"
        f"COMP_WORDS=({' '.join(shlex.quote(p) for p in parts)})\n"
        f"COMP_CWORD={len(parts) - 1}\n"
        "COMPREPLY=()\n"
        "_lbk_completion lbk\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run([bash, "-c", script], cwd=ROOT, env=env or child_env(), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    return [x for x in r.stdout.split("\n") if x], r


def protocol(shell: str, words: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """click's completion protocol, as the shell scripts drive it (fish passes the word
    being completed in COMP_CWORD, bash and zsh its index)."""
    parts = words.split(" ")
    cword = parts[-1] if shell == "fish" else str(len(parts) - 1)
    e = (env or child_env()) | {"_LBK_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    return subprocess.run([str(LBK_BIN)], env=e, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def open_repo(path) -> Repository:
    return Repository.open(LocalBackend(str(path)), lambda: PASSWORD.encode())


def make_history(tmp_path: Path, call) -> tuple[Path, list]:
    """A repository with two backups, checkpoints 'before-upgrade' and 'nightly' (twice)
    and one image, each made by the lbk command, so the cache knows them."""
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("one\n")
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(MiB))

    def ok(*args):
        code, err = call("-r", repo, "-q", *args)
        assert code == 0, err

    ok("init")
    ok("backup", src)
    ok("checkpoint", src, "--name", "before-upgrade")
    (src / "notes.txt").write_text("two\n")
    ok("checkpoint", src, "--name", "nightly")
    ok("backup", src)
    ok("checkpoint", src, "--name", "nightly")
    ok("image", "create", disk, "--name", "disk")
    snaps = load_all(open_repo(repo))
    assert [s.kind for s in snaps] == ["backup", "checkpoint", "checkpoint", "backup", "checkpoint", "image"]
    return repo, snaps


@pytest.fixture
def history(lbk, tmp_path):
    """A history of the test's own (in the test's cache), for tests that change it."""
    return make_history(tmp_path, lambda *a: (lambda r: (r.code, r.err))(lbk(*a)))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One history for the tests that only read it, with its own cache dir: each
    test's environment names that cache (``LBK_CACHE_DIR``) for its completions."""
    from lbk.cli.main import _register, run

    _register()
    tmp = tmp_path_factory.mktemp("shared")
    cache = tmp / "cache"
    with pytest.MonkeyPatch.context() as mp:
        for var, value in (("LBK_CACHE_DIR", str(cache)), ("LBK_PASSWORD", PASSWORD), ("LBK_INSECURE_FAST_KDF", "1"),
                           ("XDG_CONFIG_HOME", str(tmp / "config")), ("XDG_DATA_HOME", str(tmp / "data"))):
            mp.setenv(var, value)
        mp.delenv("LBK_REPOSITORY", raising=False)
        repo, snaps = make_history(tmp, lambda *a: (run([str(x) for x in a]), ""))
    return repo, snaps, str(cache)


@pytest.fixture
def history_ro(shared, monkeypatch):
    repo, snaps, cache = shared
    monkeypatch.setenv("LBK_CACHE_DIR", cache)
    return repo, snaps


def short(snaps) -> set[str]:
    return {s.id[:8] for s in snaps}


ALL = "all"  # every short id, latest and every @name


@pytest.mark.parametrize(
    "words, want",
    [
        ("lbk -r {repo} restore ", ALL),
        ("lbk restore --repo {repo} ", ALL),
        ("lbk -r {repo} restore @", {"@before-upgrade", "@nightly"}),
        ("lbk -r {repo} restore @n", {"@nightly"}),
        ("lbk -r {repo} restore lat", {"latest"}),
        ("lbk -r {repo} restore {first}", "first"),
        ("lbk -r {repo} restore latest /home --target ", None),  # not a REF: no snapshot ids
        ("lbk -r {repo} ls ", ALL),
        ("lbk -r {repo} diff ", ALL),
        ("lbk -r {repo} diff latest ", ALL),  # REF2 (or a PATH, once it starts like one)
        ("lbk -r {repo} diff --at ", ALL),
        ("lbk -r {repo} diff --content /x --at latest --against ", ALL),
        ("lbk -r {repo} cat snapshot ", ALL),
        ("lbk -r {repo} cat tree ", set()),
        ("lbk -r {repo} rollback /home/ann --to ", ALL),
        ("lbk -r {repo} forget ", ALL),
        ("lbk -r {repo} forget latest ", ALL),
        ("lbk -r {repo} stats ", ALL),
        ("lbk -r {repo} log /home/ann --since ", ALL),
        ("lbk -r {repo} log /home/ann --until @", {"@before-upgrade", "@nightly"}),
        ("lbk -r {repo} find '*.txt' --since ", ALL),
        ("lbk -r {repo} image restore ", "image"),
        ("lbk -r {repo} image verify ", "image"),
        ("lbk -r {repo} image info ", "image"),
    ],
)
def test_bash_completes_refs_of_a_real_repository(history_ro, words, want):
    repo, snaps = history_ro
    got, r = bash_complete(words.format(repo=repo, first=snaps[0].id[:3]))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if want is None:
        assert not short(snaps) & set(got), got
        return
    named = {
        ALL: short(snaps) | {"latest", "@before-upgrade", "@nightly"},
        "first": {s.id[:8] for s in snaps if s.id.startswith(snaps[0].id[:3])},
        "image": short(s for s in snaps if s.kind == "image") | {"latest"},
    }
    expected = named[want] if isinstance(want, str) else want
    assert set(got) == expected
    assert len(got) == len(set(got))  # "nightly" twice is offered once


def test_candidates_come_newest_first_with_descriptions(history_ro):
    repo, snaps = history_ro
    r = protocol("zsh", f"lbk -r {repo} restore ")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.split("\n")
    items = [(lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3) if lines[i] == "plain"]
    values = [v for v, _ in items]
    assert values[:3] == ["latest", "@nightly", "@before-upgrade"]
    assert values[3:] == [s.id[:8] for s in reversed(snaps)]
    desc = dict(items)
    assert desc["latest"].startswith(f"newest snapshot: {snaps[-1].id[:8]}, ")
    assert desc["@nightly"].startswith(f"checkpoint {snaps[4].id[:8]}, ")  # the newer of the two
    assert desc[snaps[-1].id[:8]].endswith(" image disk")


def test_the_repository_from_env_and_from_the_config_file(history_ro, tmp_path):
    repo, snaps = history_ro
    got, _ = bash_complete("lbk restore ", child_env(LBK_REPOSITORY=str(repo)))
    assert short(snaps) <= set(got)
    cfg = Path(os.environ["XDG_CONFIG_HOME"]) / "lbk" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'repository = "{repo}"\n')
    got, _ = bash_complete("lbk restore ")
    assert short(snaps) <= set(got)


def test_no_password_and_no_repository_are_needed(history, tmp_path):
    """Completion reads the cache only: with the repository moved away and a password
    command that would leave a mark if it ran, it still answers, at once, without error."""
    repo, snaps = history
    repo.rename(tmp_path / "elsewhere")
    marker = tmp_path / "password-was-asked"
    env = child_env(LBK_PASSWORD_COMMAND=f"touch {marker}")
    for words in (f"lbk -r {repo} restore ", f"lbk --password-command 'touch {marker}' -r {repo} ls "):
        got, r = bash_complete(words, env)
        assert r.returncode == 0 and r.stderr == ""
        assert short(snaps) <= set(got)
    assert not marker.exists()
    # and the command itself does need the repository: it is really gone
    p = subprocess.run([str(LBK_BIN), "-r", str(repo), "snapshots"], env=child_env(LBK_PASSWORD=PASSWORD),
                       capture_output=True, text=True)
    assert p.returncode == 10


@pytest.mark.parametrize(
    "words, env",
    [
        ("lbk -r {repo} restore ", {"LBK_CACHE_DIR": "{tmp}/empty-cache"}),  # nothing cached
        ("lbk -r {tmp}/never-opened restore ", {}),  # a repository this cache never saw
        ("lbk --no-cache -r {repo} restore ", {}),
        ("lbk restore ", {}),  # no repository configured at all
        ("lbk -r sftp:nowhere.invalid:/x restore ", {}),  # not resolved, not connected
        ("lbk -r {repo} --cache-dir {tmp}/empty-cache restore ", {}),
    ],
)
def test_nothing_cached_completes_nothing_without_error(history_ro, tmp_path, words, env):
    repo, _ = history_ro
    fill = lambda s: s.format(repo=repo, tmp=tmp_path)  # noqa: E731
    got, r = bash_complete(fill(words), child_env(**{k: fill(v) for k, v in env.items()}))
    assert (got, r.returncode, r.stderr) == ([], 0, "")


def test_snapshots_saved_elsewhere_appear_after_a_listing_and_forget_removes(history, lbk):
    repo, snaps = history
    r = open_repo(repo)  # another machine, or lbk without this cache: the cache does not hear of it
    other = snaps[0]
    other.id, other.name, other.kind = "", "from-elsewhere", "checkpoint"
    save_snapshot(r, other)
    words = f"lbk -r {repo} restore "
    assert "@from-elsewhere" not in bash_complete(words)[0]
    assert lbk("-r", repo, "snapshots").code == 0  # any full listing refreshes the list
    got = bash_complete(words)[0]
    assert "@from-elsewhere" in got and other.id[:8] in got

    assert lbk("-r", repo, "forget", other.id[:8]).code == 0
    got = bash_complete(words)[0]
    assert "@from-elsewhere" not in got and other.id[:8] not in got

    src = Path(snaps[1].paths[0].decode())
    res = lbk("-r", repo, "--json", "backup", src)  # a new snapshot is there at once
    new_id = res.lines()[-1]["snapshot_id"]
    assert new_id[:8] in bash_complete(words)[0]


def test_log_refreshes_the_list_through_the_catalog(history, lbk):
    repo, snaps = history
    r = open_repo(repo)
    other = snaps[0]
    other.id, other.name, other.kind = "", "seen-by-log", "checkpoint"
    save_snapshot(r, other)
    assert lbk("-r", repo, "log", snaps[0].paths[0]).code == 0
    assert "@seen-by-log" in bash_complete(f"lbk -r {repo} restore @")[0]


def test_what_the_cache_keeps_is_private_and_names_no_location(history_ro):
    repo, snaps = history_ro
    cache = Path(os.environ["LBK_CACHE_DIR"])
    rid = open_repo(repo).id
    (loc,) = (cache / "locations").iterdir()
    assert loc.read_text() == rid + "\n"
    listing = cache / rid / "snapshots"
    for p in (cache, cache / "locations", cache / rid):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in (loc, listing):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    # the list holds ids, times, kinds, names: not the repository's path nor the files'
    text = listing.read_text()
    assert str(repo) not in text and "notes.txt" not in text and snaps[-1].id in text


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_load(shell, tmp_path):
    exe = shutil.which(shell)
    need(exe is not None, f"{shell} is not installed (apt-get install {shell})")
    src = ROOT / "completions" / f"lbk.{shell}"
    cmd = {"zsh": f"autoload -U compinit && compinit -u && source {src} && whence -w _lbk_completion",
           "fish": f"source {src} && complete -c lbk"}[shell]
    r = subprocess.run([exe, "-c", cmd], env=child_env(HOME=str(tmp_path)), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "_lbk_completion" in r.stdout


def test_fish_completes_a_ref_end_to_end(history_ro):
    fish = shutil.which("fish")
    need(fish is not None, "fish is not installed (apt-get install fish)")
    repo, snaps = history_ro
    script = f"source {ROOT / 'completions' / 'lbk.fish'}; complete -C 'lbk -r {repo} restore @'"
    r = subprocess.run([fish, "-c", script], env=child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert set(got) == {"@before-upgrade", "@nightly"}
    assert got["@nightly"].startswith(f"checkpoint {snaps[4].id[:8]}")


def test_subcommands_and_refs_through_the_protocol_for_every_shell(history_ro):
    repo, snaps = history_ro
    for shell in ("bash", "zsh", "fish"):
        r = protocol(shell, f"lbk -r {repo} image restore ")
        assert r.returncode == 0 and r.stderr == "", (shell, r.stderr)
        assert snaps[-1].id[:8] in r.stdout and snaps[0].id[:8] not in r.stdout, shell


def test_sftp_repository_completes_while_the_server_is_down(sshd_factory, tmp_path, monkeypatch):
    """A real SSH server: init, back up and list through it, stop it, then complete."""
    from tests.sshd import write_ssh_home

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server = sshd_factory()
    home = write_ssh_home(tmp_path / "home", server)
    url = f"sftp:lbktest:{server.root / 'repo'}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x\n")
    env = child_env(HOME=str(home.path), LBK_PASSWORD=PASSWORD)
    for args in (["init"], ["checkpoint", str(src), "--name", "remote"], ["snapshots"]):
        p = subprocess.run([str(LBK_BIN), "-r", url, *args], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    server.stop()
    got, r = bash_complete(f"lbk -r {url} restore @", child_env(HOME=str(home.path)))
    assert (got, r.returncode, r.stderr) == (["@remote"], 0, "")


# -- it stays cheap -------------------------------------------------------------------------------

HEAVY = ("lbk.repo.repository", "lbk.catalog", "nacl", "zstandard", "blake3", "sqlite3", "asyncssh")


@pytest.mark.parametrize("module", ["cmd_restore", "cmd_ls", "cmd_diff", "cmd_cat", "cmd_rollback", "cmd_stats",
                                    "cmd_log", "cmd_find", "cmd_image"])
def test_completing_a_ref_loads_none_of_the_repository_modules(module):
    """Completion imports the command's module for its parameters; the crypto, the
    compression and the repository are for running it (they double the time of a
    completion: bench/completion_bench.py)."""
    code = (f"import sys, lbk.cli.main, lbk.cli.{module}, lbk.refcache; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_restore_offers_the_overwrite_modes_of_the_op():
    from lbk.cli.cmd_restore import OVERWRITE_MODES
    from lbk.ops.restore import OVERWRITE_MODES as OP_MODES

    assert OVERWRITE_MODES == OP_MODES
