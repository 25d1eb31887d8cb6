"""lbk completion: print a shell completion script (click's completion machinery)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from lbk.cli.main import _register, cli, command

SHELLS = ("bash", "zsh", "fish")
PROG_NAME = "lbk"
COMPLETE_VAR = "_LBK_COMPLETE"


def completion_source(shell: str) -> str:
    """The completion script for SHELL, as click generates it for the root command.

    Every command module is imported first so the script's (and click's) view of the
    command tree is complete. The script itself calls back into ``lbk`` with
    ``_LBK_COMPLETE=<shell>_complete`` to compute the candidates at completion time.
    """
    _register()
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - SHELLS is the click-supported set
        raise click.UsageError(f"unsupported shell: {shell}")
    return cls(cli, {}, PROG_NAME, COMPLETE_VAR).source()


@command("completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def completion_cmd(shell) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Load it in the current shell, or install it where your shell looks for completions.
    Pre-generated scripts are also shipped in the completions/ directory.

    \b
    Example:
      eval "$(lbk completion bash)"
      lbk completion zsh > ~/.zfunc/_lbk
      lbk completion fish > ~/.config/fish/completions/lbk.fish
    """
    src = completion_source(shell)
    click.echo(src if src.endswith("\n") else src + "\n", nl=False)
