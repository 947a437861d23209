"""Helpers shared by the benchmark scripts: memory, machine load, the printed table."""
from __future__ import annotations

import os
import resource
from collections.abc import Sequence


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_line() -> str:
    """The 1-minute load average against the core count, for judging a shared machine."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def print_rows(rows: Sequence[tuple[str, str]], indent: str = "") -> None:
    """Print ``(key, value)`` rows as an aligned two-column table."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{indent}{key:<{width}}  {value}")
