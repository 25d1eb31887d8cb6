"""Shared fixtures. Every test runs with a cheap KDF, its own HOME-like dirs and cache."""

from __future__ import annotations


from tests.helpers import *  # noqa: F401,F403  (fixtures: lbk_env, mem_repo, local_repo, lbk, ...)
from tests.sshd import ssh_home, sshd, sshd_factory  # noqa: F401  (real OpenSSH sshd on loopback)
from tests.seaweed import s3, seaweed, seaweed_factory  # noqa: F401  (real SeaweedFS S3 server on loopback)
