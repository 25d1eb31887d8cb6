"""lbk init: create a repository (the default local one when no --repo is given)."""

from __future__ import annotations


from lbk.backend.registry import open_backend
from lbk.cli.context import config_path, default_repository_path, read_user_config, write_user_config_value
from lbk.cli.main import command, settings
from lbk.ops.repo_admin import init_repository


@command("init")
def init_cmd() -> None:
    """Create a new repository and print its id.

    With no --repo and no LBK_REPOSITORY (and none configured), the default local
    repository is created under the user data directory and recorded in the config file.

    \b
    Example:
      lbk init --repo /mnt/backup/lbk
    """
    s = settings()
    default = False
    if not s.repo:
        url = read_user_config().get("repository")
        if url:
            s.repo = str(url)
        else:
            s.repo = default_repository_path()
            default = True
    backend = open_backend(s.repo, on_retry=s.out.warn)
    repo = init_repository(backend, s.new_password(what="password for the new repository"))
    s.track(repo, created=True)
    if default:
        write_user_config_value("repository", s.repo)
    s.out.doc({"message_type": "initialized", "id": repo.id, "repository": backend.location})
    s.out.print(f"created repository {repo.id[:10]} at {backend.location}")
    if default:
        s.out.info(f"recorded as the default repository in {config_path()}")
    s.out.info("keep your password safe: without it the data cannot be recovered")
