"""lbk unlock: remove stale locks."""

from __future__ import annotations

import click

from lbk.cli.main import command, settings
from lbk.ops.repo_admin import unlock


@command("unlock")
@click.option("--remove-all", is_flag=True, help="Remove every lock, not only stale ones (make sure no lbk runs).")
def unlock_cmd(remove_all) -> None:
    """Remove stale locks (their process is gone, or they were not refreshed for 30 minutes).

    \b
    Example:
      lbk unlock
    """
    s = settings()
    repo = s.open_repo()
    removed = unlock(repo, remove_all)
    s.out.doc({"removed": [{"id": r.name, "host": r.host, "pid": r.pid, "exclusive": r.exclusive} for r in removed]})
    for r in removed:
        s.out.print(f"removed {r.describe()}")
    s.out.print(f"{len(removed)} locks removed")
