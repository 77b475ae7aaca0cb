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


def tvm_threads(threads: int) -> None:
    """Make TVM compute with `threads` threads, as ONNX Runtime does with `threads` intra-op threads:
    TVM sizes its pool from TVM_NUM_THREADS once, at its first parallel kernel, and by default on x86
    takes half the CPUs (one thread on a 2-core VM). Call before anything runs a TVM library."""
    import os

    os.environ["TVM_NUM_THREADS"] = str(threads)
