"""The timing loop every benchmark uses (imported by the bench scripts, which run with bench/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    """Milliseconds of each of `runs` calls of `fn`, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out
