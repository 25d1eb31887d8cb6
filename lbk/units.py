"""Human units for sizes, shared by the CLI's output and by messages that ops store
(a repaired file's ``error`` says how much was lost)."""

from __future__ import annotations


def human_size(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
