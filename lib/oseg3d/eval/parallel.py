"""Per-scene metric work over forked processes.

Scoring a ScanNet-val-sized set is ~300 independent per-scene computations (IoUs against the GT
partition), then a cheap reduction. Forked children inherit the scenes (no pickling of masks); only the
small per-scene results come back.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, TypeVar

__all__ = ["scene_map", "default_workers"]

T = TypeVar("T")
_FN: Callable | None = None


def default_workers() -> int:
    """Cores this process may use, at most 16."""
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _call(i: int):
    return _FN(i)


def scene_map(fn: Callable[[int], T], n: int, workers: int = 1) -> list[T]:
    """`[fn(i) for i in range(n)]`, over `workers` forked processes when > 1 (Linux' fork; elsewhere, or for
    a handful of scenes, in this process)."""
    global _FN
    if workers <= 1 or n < 4 or "fork" not in mp.get_all_start_methods():
        return [fn(i) for i in range(n)]
    _FN = fn
    try:
        with mp.get_context("fork").Pool(min(workers, n)) as pool:
            return pool.map(_call, range(n), chunksize=max(1, n // (4 * workers)))
    finally:
        _FN = None
