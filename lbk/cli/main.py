"""The root command, the global options, and ``main()``: the ONE place exceptions
become exit codes.

Global options are accepted before or after the subcommand: the same option objects are
attached to the group and to every command, and each writes into one ``Settings`` on
the root context unless it was left at its default.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
import threading

import click

from lbk import __version__
from lbk.cli.context import Settings
from lbk.cli.output import Output
from lbk.errors import ExitCode, Interrupted, LbkError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Trees are walked recursively, two to three frames per directory level. A path ends at
# PATH_MAX (4096 bytes: at most 2048 levels), which Python's default limit of 1,000
# frames does not reach. Frames that recurse through C (generators, json) take up to
# ~500 bytes of C stack each (measured: ls -R of a forged chain crashed 1/2/4 MiB stacks
# at 4,000/8,000/16,000 frames), so the limit is one frame per KiB of stack: 8,192 with
# the usual 8 MiB, enough for any path; a smaller stack gets a smaller limit, never a
# crash. Deeper (forged) trees end in a clean "nested too deeply".
STACK_BYTES_PER_FRAME = 1024
TREE_RECURSION_LIMIT = 20_000


def allow_deep_trees() -> None:
    """Raise the recursion limit as far as the stack safely allows (see above); threads
    get the main thread's stack size (glibc gives them 2 MiB when the limit is unlimited)."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    stack = soft
    if soft == resource.RLIM_INFINITY:
        stack = 8 << 20
        threading.stack_size(stack)
    frames = min(TREE_RECURSION_LIMIT, stack // STACK_BYTES_PER_FRAME)
    if sys.getrecursionlimit() < frames:
        sys.setrecursionlimit(frames)


_state = {"json": False}


def _setter(attr: str, flag_count: bool = False):
    """The callback of one global option: write its value into the root ``Settings``.

    The option exists on the group and on every command, so it is processed twice; a
    value from the environment must not replace one given on the command line at the
    other level (``LBK_REPOSITORY=/a lbk -r /b snapshots`` means /b)."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        src = ctx.get_parameter_source(param.name)
        root = ctx.find_root()
        settings = root.obj if isinstance(root.obj, Settings) else None
        if settings is None:
            settings = root.obj = Settings()
        if src is not None and src.name == "DEFAULT":
            return value
        if src is not None and src.name == "ENVIRONMENT" and attr in settings.from_command_line:
            return value
        if src is not None and src.name == "COMMANDLINE":
            settings.from_command_line.add(attr)
        if flag_count:
            setattr(settings, attr, getattr(settings, attr) + value)
        else:
            setattr(settings, attr, value)
        if attr == "json":
            _state["json"] = bool(value)
        return value

    return callback


GLOBAL_OPTIONS = [
    click.option("-r", "--repo", "repo", envvar="LBK_REPOSITORY", metavar="URL", expose_value=False,
                 callback=_setter("repo"), help="Repository URL or path (env LBK_REPOSITORY)."),
    click.option("--password-file", envvar="LBK_PASSWORD_FILE", metavar="FILE", expose_value=False,
                 callback=_setter("password_file"), help="Read the password from FILE (env LBK_PASSWORD_FILE)."),
    click.option("--password-command", envvar="LBK_PASSWORD_COMMAND", metavar="CMD", expose_value=False,
                 callback=_setter("password_command"), help="Run CMD and read the password from its output."),
    click.option("--cache-dir", envvar="LBK_CACHE_DIR", metavar="DIR", expose_value=False,
                 callback=_setter("cache_dir"), help="Local cache directory (env LBK_CACHE_DIR)."),
    click.option("--no-cache", is_flag=True, default=False, expose_value=False, callback=_setter("no_cache"),
                 help="Do not use a local cache."),
    click.option("--json", "json_", is_flag=True, default=False, expose_value=False, callback=_setter("json"),
                 help="Machine-readable JSON output on stdout."),
    click.option("-q", "--quiet", is_flag=True, default=False, expose_value=False, callback=_setter("quiet"),
                 help="No progress, only errors and results."),
    click.option("-v", "--verbose", count=True, expose_value=False, callback=_setter("verbose", True),
                 help="More output (repeatable)."),
    click.option("--limit-upload", type=click.IntRange(min=1), metavar="KIB/S", expose_value=False,
                 callback=_setter("limit_upload"), help="Limit upload bandwidth."),
    click.option("--limit-download", type=click.IntRange(min=1), metavar="KIB/S", expose_value=False,
                 callback=_setter("limit_download"), help="Limit download bandwidth."),
]


def global_options(f):
    for opt in reversed(GLOBAL_OPTIONS):
        f = opt(f)
    return f


class LazyGroup(click.Group):
    """Imports a command's module (``lbk/cli/cmd_<name>.py``) only when it is invoked,
    so ``lbk status`` does not pay for the imports of every other command. (Commands
    that take a REF go further and import their ops inside the command function, so
    that completing a REF at the shell stays fast: see lbk/cli/params.py.)"""

    def get_command(self, ctx, name):
        if name not in self.commands and re.fullmatch(r"[a-z]+", name or ""):
            try:
                importlib.import_module(f"lbk.cli.cmd_{name}")
            except ModuleNotFoundError as e:
                if e.name != f"lbk.cli.cmd_{name}":
                    raise
        return self.commands.get(name)

    def list_commands(self, ctx):
        _register()
        return sorted(self.commands)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="lbk")
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """lbk: continuous data protection from the command line.

    Every saved file becomes a version: deduplicated, compressed, encrypted, and stored
    in a repository on a local disk or a server over SSH.

    \b
    Example:
      lbk init
      lbk backup ~/Documents
      lbk snapshots
    """
    if not isinstance(ctx.obj, Settings):
        ctx.obj = Settings()


def command(name: str, **kw):
    """Register a subcommand that also accepts the global options."""

    def deco(f):
        return cli.command(name, context_settings=CONTEXT_SETTINGS, **kw)(global_options(f))

    return deco


def settings() -> Settings:
    return click.get_current_context().find_root().obj


def _register() -> None:
    """Import every ``lbk.cli.cmd_*`` module; each registers its commands on ``cli``."""
    import lbk.cli as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"lbk.cli.{mod.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every outcome to an exit code from SPEC.md."""
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    _state["json"] = False
    allow_deep_trees()
    try:
        rv = cli.main(args=argv, prog_name="lbk", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        msg = e.format_message()
        if e.ctx is not None and not _state["json"]:
            sys.stderr.write(e.ctx.get_usage() + "\n")
            hint = f"Try '{e.ctx.command_path} -h' for help.\n"
            sys.stderr.write(hint)
        Output(_state["json"]).fatal(ExitCode.USAGE, msg)
        return ExitCode.USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        Output(_state["json"]).fatal(ExitCode.INTERRUPTED, Interrupted().message)
        return ExitCode.INTERRUPTED
    except click.ClickException as e:
        Output(_state["json"]).fatal(ExitCode.FATAL, e.format_message())
        return ExitCode.FATAL
    except LbkError as e:
        Output(_state["json"]).fatal(e.exit_code, e.message)
        return e.exit_code
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return ExitCode.FATAL
    except (RecursionError, MemoryError) as e:  # limits, not bugs: a tree too deep, a machine too small
        what = "directories nested too deeply to process" if isinstance(e, RecursionError) else "out of memory"
        Output(_state["json"]).fatal(ExitCode.FATAL, what)
        return ExitCode.FATAL
    except Exception as e:  # a bug: one line for the user, the traceback on request
        if os.environ.get("LBK_DEBUG"):
            import traceback

            traceback.print_exc()
        Output(_state["json"]).fatal(
            ExitCode.FATAL, f"internal error: {type(e).__name__}: {e} (set LBK_DEBUG=1 for a traceback)"
        )
        return ExitCode.FATAL
