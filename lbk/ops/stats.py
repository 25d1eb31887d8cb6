"""Stats: stored size, original size, deduplication and compression ratios."""

from __future__ import annotations

from dataclasses import dataclass

from lbk.backend.base import FileKind
from lbk.model import DIR, FILE, Snapshot
from lbk.ops.restore import tree_nodes
from lbk.repo.repository import Repository


@dataclass
class Stats:
    snapshots: int
    files: int
    original_bytes: int  # sum of file sizes over the snapshots, as if restored
    unique_bytes: int  # distinct content referenced, uncompressed
    stored_bytes: int  # distinct content referenced, as stored (compressed + encrypted)
    repository_bytes: int  # every file in the repository

    @property
    def dedup_ratio(self) -> float:
        return self.original_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["dedup_ratio"] = round(self.dedup_ratio, 3)
        d["compression_ratio"] = round(self.compression_ratio, 3)
        return d


def stats(repo: Repository, snaps: list[Snapshot]) -> Stats:
    idx = repo.ensure_index()
    blobs: set[bytes] = set()
    memo: dict[bytes, tuple[int, int]] = {}

    def walk(tree: bytes) -> tuple[int, int]:
        """(files, bytes) beneath a tree; each distinct tree is read once."""
        if tree in memo:
            return memo[tree]
        blobs.add(tree)
        files = size = 0
        for n in tree_nodes(repo, tree):
            if n.type == FILE:
                files += 1
                size += n.size
                blobs.update(n.content)
            elif n.type == DIR and n.subtree:
                f, b = walk(n.subtree)
                files += f
                size += b
        memo[tree] = (files, size)
        return files, size

    files = original = 0
    for s in snaps:
        f, b = walk(s.tree)
        files += f
        original += b
    unique = stored = 0
    for b in blobs:
        loc = idx.get(b)
        if loc is not None:
            unique += loc.raw_length
            stored += loc.length
    repo_bytes = sum(f.size for k in FileKind for f in repo.backend.list(k))
    return Stats(len(snaps), files, original, unique, stored, repo_bytes)
