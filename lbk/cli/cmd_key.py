"""lbk key: manage the passwords that open a repository."""

from __future__ import annotations

import click

from lbk.cli.main import CONTEXT_SETTINGS, cli, global_options, settings
from lbk.ops import repo_admin


@cli.group("key", context_settings=CONTEXT_SETTINGS)
@global_options
def key_group() -> None:
    """Manage keys: several passwords can open one repository.

    \b
    Example:
      lbk key add --new-password-file ~/.lbk-second
      lbk key list
    """


@key_group.command("list", context_settings=CONTEXT_SETTINGS)
@global_options
def key_list() -> None:
    """List keys (the one in use is marked with *).

    \b
    Example:
      lbk key list --json
    """
    s = settings()
    repo = s.open_repo()
    keys = repo_admin.list_keys(repo)
    s.out.doc([{"id": k.id, "current": k.id == repo.key_name, "created": k.created, "host": k.host, "user": k.user} for k in keys])
    for k in keys:
        mark = "*" if k.id == repo.key_name else " "
        s.out.print(f"{mark}{k.id[:10]}  {k.created[:19]:<20} {k.user}@{k.host}")


@key_group.command("add", context_settings=CONTEXT_SETTINGS)
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@global_options
def key_add(new_password_file) -> None:
    """Add a key for a new password.

    \b
    Example:
      lbk key add --new-password-file ~/.lbk-second
    """
    s = settings()
    repo = s.open_repo()
    name = repo_admin.add_key(repo, s.new_password(new_password_file))
    s.out.doc({"id": name})
    s.out.print(f"added key {name[:10]}")


@key_group.command("remove", context_settings=CONTEXT_SETTINGS)
@click.argument("key_id")
@global_options
def key_remove(key_id) -> None:
    """Remove the key KEY_ID (not the one in use, never the last one).

    \b
    Example:
      lbk key remove 3f2a9c01
    """
    s = settings()
    repo = s.open_repo()
    name = repo_admin.remove_key(repo, key_id)
    s.out.doc({"removed": name})
    s.out.print(f"removed key {name[:10]}")


@key_group.command("passwd", context_settings=CONTEXT_SETTINGS)
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@global_options
def key_passwd(new_password_file) -> None:
    """Change the password of the key in use.

    \b
    Example:
      lbk key passwd --new-password-file ~/.lbk-new
    """
    s = settings()
    repo = s.open_repo()
    if not new_password_file and not click.get_text_stream("stdin").isatty():
        raise click.UsageError("--new-password-file is required when not on a terminal")
    name = repo_admin.change_password(repo, s.new_password(new_password_file))
    s.out.doc({"id": name})
    s.out.print(f"password changed (new key {name[:10]})")
