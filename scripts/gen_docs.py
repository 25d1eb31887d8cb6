#!/usr/bin/env python3
"""Regenerate the shell completion scripts and the man pages from the click commands.

    python scripts/gen_docs.py            # rewrite completions/ and man/ in the repository
    python scripts/gen_docs.py --check    # exit 1 (and name the files) if they are out of date
    python scripts/gen_docs.py --out DIR  # write into DIR/completions and DIR/man instead

Output is deterministic: it depends only on the command definitions and the package
version (no dates, no terminal width), so the committed files can be compared with a
fresh run (tests/cli/test_generated_docs.py does exactly that).

Generated files:
  completions/lbk.bash, completions/lbk.zsh, completions/lbk.fish
  man/lbk.1, man/lbk-<command>.1, man/lbk-<group>-<subcommand>.1
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # use this checkout's lbk, not whatever else is installed
    sys.path.insert(0, str(ROOT))

import click  # noqa: E402

from lbk import __version__  # noqa: E402
from lbk.cli.cmd_completion import SHELLS, completion_source  # noqa: E402
from lbk.cli.main import _register, cli  # noqa: E402
from lbk.errors import ExitCode  # noqa: E402

PROG = "lbk"
MANUAL = "lbk Manual"
# Meanings from SPEC.md, "Exit codes".
EXIT_STATUS = [
    (ExitCode.OK, "Success."),
    (ExitCode.FATAL, "Fatal error (the message is on stderr)."),
    (ExitCode.USAGE, "Usage error: a bad option or argument."),
    (ExitCode.PARTIAL, "A backup or capture finished, but some source files could not be read "
                       "(each is named on stderr; the snapshot is written)."),
    (ExitCode.NO_REPOSITORY, "The repository does not exist."),
    (ExitCode.LOCKED, "The repository could not be locked."),
    (ExitCode.WRONG_PASSWORD, "Wrong password: no key matches."),
    (ExitCode.INTERRUPTED, "Interrupted (SIGINT); nothing already committed is lost."),
]
EXAMPLE_HEADS = ("example:", "examples:")


# --------------------------------------------------------------------------- roff helpers


def esc(text: str) -> str:
    """Escape running text for roff (no leading-dot protection; see ``line``)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def line(text: str) -> str:
    """One output line of text: escaped, and protected if it would start a request."""
    t = esc(text)
    if t.startswith((".", "'")):
        t = "\\&" + t
    return t


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def italic_caps(text: str) -> str:
    """Escape text and set metavariables (UPPER_CASE words) in italics."""
    return re.sub(r"\b[A-Z][A-Z0-9_]+\b", lambda m: f"\\fI{m.group(0)}\\fR", esc(text))


def fmt_opts(record: str) -> str:
    """'-r, --repo URL' -> bold option names, italic metavariables."""
    alts = []
    for alt in record.split(", "):
        words = []
        for w in alt.split(" "):
            words.append(bold(w) if w.startswith("-") else f"\\fI{esc(w)}\\fR")
        alts.append(" ".join(words))
    return ", ".join(alts)


# --------------------------------------------------------------------------- help parsing


class Help:
    """A command's docstring split into summary, description paragraphs and examples."""

    def __init__(self, raw: str | None):
        text = inspect.cleandoc(raw or "").split("\f", 1)[0]
        self.summary = ""
        self.paragraphs: list[tuple[str, list[str]]] = []  # ("text"|"verbatim", lines)
        self.examples: list[str] = []
        for para in re.split(r"\n[ \t]*\n", text.strip()):
            lines = para.split("\n")
            if lines and lines[0].strip() == "\b":
                body = lines[1:]
                if body and body[0].strip().lower() in EXAMPLE_HEADS:
                    self.examples += inspect.cleandoc("\n".join(body[1:])).split("\n")
                else:
                    self.paragraphs.append(("verbatim", inspect.cleandoc("\n".join(body)).split("\n")))
            else:
                joined = " ".join(x.strip() for x in lines if x.strip())
                if not joined:
                    continue
                if not self.summary:
                    self.summary = joined
                self.paragraphs.append(("text", [joined]))


def short_description(cmd: click.Command, help_: Help) -> str:
    s = help_.summary or cmd.short_help or ""
    s = re.sub(rf"^{PROG}:\s*", "", s)
    return s.rstrip(".")


# --------------------------------------------------------------------------- man pages


def global_names() -> set[str]:
    return {p.name for p in cli.params}


def page_name(path: list[str]) -> str:
    return "-".join(path)


def option_items(cmd: click.Command, ctx: click.Context, want_global: bool) -> list[tuple[str, str]]:
    gnames = global_names()
    items = []
    params = list(cmd.get_params(ctx))
    for p in params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        is_global = p.name in gnames or p is cmd.get_help_option(ctx)
        if is_global != want_global:
            continue
        rec = p.get_help_record(ctx)
        if rec:
            items.append(rec)
    return items


def render_items(out: list[str], items: list[tuple[str, str]]) -> None:
    for opts, help_text in items:
        out.append(".TP")
        out.append(fmt_opts(opts))
        out.append(line(help_text or ""))


def render_page(path: list[str], cmd: click.Command, ctx: click.Context,
                children: list[tuple[str, click.Command]], parent: list[str] | None) -> str:
    name = page_name(path)
    h = Help(cmd.help)
    out = [
        f'.\\" {name}.1: generated by scripts/gen_docs.py from the command definitions.',
        '.\\" Do not edit; run "python scripts/gen_docs.py" instead.',
        f'.TH "{esc(name.upper())}" "1" "" "{PROG} {esc(__version__)}" "{MANUAL}"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(short_description(cmd, h))}",
        ".SH SYNOPSIS",
        ".B " + esc(" ".join(path)),
        italic_caps(" ".join(cmd.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    first = True
    for kind, lines in h.paragraphs:
        if not first:
            out.append(".PP")
        first = False
        if kind == "text":
            out.append(line(lines[0]))
        else:
            out += [".RS 4", ".nf"] + [line(x) for x in lines] + [".fi", ".RE"]
    if children:
        out.append(".SH COMMANDS")
        for cname, child in children:
            out.append(".TP")
            out.append(f"\\fB{esc(page_name(path + [cname]))}\\fR(1)")
            out.append(line(short_description(child, Help(child.help)) + "."))
    own = option_items(cmd, ctx, want_global=False)
    if own:
        out.append(".SH OPTIONS")
        render_items(out, own)
    out.append(".SH GLOBAL OPTIONS")
    if path != [PROG]:
        out.append(line(f"Accepted before or after the command name; see {PROG}(1)."))
    render_items(out, option_items(cmd, ctx, want_global=True))
    if h.examples:
        out += [".SH EXAMPLES", ".RS 4", ".nf"] + [line(x) for x in h.examples] + [".fi", ".RE"]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{int(code)}\\fR", line(meaning)]
    out.append(".SH ENVIRONMENT")
    for var, meaning in [
        ("LBK_REPOSITORY", "Repository URL or path, as --repo."),
        ("LBK_PASSWORD_FILE", "File holding the password, as --password-file."),
        ("LBK_PASSWORD_COMMAND", "Command printing the password, as --password-command."),
        ("LBK_CACHE_DIR", "Local cache directory, as --cache-dir."),
    ]:
        out += [".TP", bold(var), line(meaning)]
    out.append(".SH SEE ALSO")
    refs: list[str] = []
    if path != [PROG]:
        refs.append(PROG)
    if parent and parent != [PROG]:
        refs.append(page_name(parent))
    refs += [page_name(path + [c]) for c, _ in children]
    out.append(",\n".join(f"\\fB\\%{esc(r)}\\fR(1)" for r in refs) if refs else f"\\fB{PROG}\\fR \\-\\-help")
    return "\n".join(out) + "\n"


def visible_children(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    kids = []
    for n in sorted(group.list_commands(ctx)):
        c = group.get_command(ctx, n)
        if c is not None and not c.hidden:
            kids.append((n, c))
    return kids


def man_pages() -> dict[str, str]:
    _register()
    pages: dict[str, str] = {}

    def walk(cmd: click.Command, path: list[str], parent_ctx: click.Context | None, parent: list[str] | None):
        ctx = click.Context(cmd, info_name=path[-1], parent=parent_ctx, **cmd.context_settings)
        kids = visible_children(cmd, ctx) if isinstance(cmd, click.Group) else []
        pages[f"man/{page_name(path)}.1"] = render_page(path, cmd, ctx, kids, parent)
        for n, c in kids:
            walk(c, path + [n], ctx, path)

    walk(cli, [PROG], None, None)
    return pages


# --------------------------------------------------------------------------- completions


def completions() -> dict[str, str]:
    files = {}
    for shell in SHELLS:
        src = completion_source(shell)
        files[f"completions/{PROG}.{shell}"] = src if src.endswith("\n") else src + "\n"
    return files


def generate() -> dict[str, str]:
    """Every generated file: relative path -> content."""
    return {**completions(), **man_pages()}


def stale(root: Path, files: dict[str, str]) -> list[str]:
    """Generated-looking files under ROOT that this run would not produce."""
    found = [p for p in (root / "completions").glob(f"{PROG}.*")] + list((root / "man").glob(f"{PROG}*.1"))
    return sorted(str(p.relative_to(root)) for p in found if str(p.relative_to(root)) not in files)


def diff(root: Path, files: dict[str, str]) -> list[str]:
    """Relative paths that are missing, different, or stale under ROOT."""
    bad = [rel for rel, text in files.items()
           if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text]
    return sorted(bad + stale(root, files))


def write(root: Path, files: dict[str, str]) -> None:
    for rel in stale(root, files):
        (root / rel).unlink()
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT, help="root to write completions/ and man/ under")
    ap.add_argument("--check", action="store_true", help="only report out-of-date files; exit 1 if any")
    args = ap.parse_args(argv)
    files = generate()
    if args.check:
        bad = diff(args.out, files)
        for rel in bad:
            print(f"out of date: {rel}", file=sys.stderr)
        if bad:
            print("run: python scripts/gen_docs.py", file=sys.stderr)
        return 1 if bad else 0
    write(args.out, files)
    print(f"wrote {len(files)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
