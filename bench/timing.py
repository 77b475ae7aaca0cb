"""The timing loop every benchmark uses (imported by the bench scripts, which run with bench/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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


def in_turns(
    engines: dict[str, Callable[[], object]], runs: int, rounds: int, warmup: int = 5
) -> dict[str, list[float]]:
    """Milliseconds of `runs` calls of each engine, the engines taking turns in `rounds` rounds
    (`warmup` untimed calls at each turn): a drift of the machine's speed, which on the shared VMs
    here reaches ±30% within minutes, then reaches every engine alike."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, call in engines.items():
            samples[name] += timed(call, max(runs // rounds, 1), warmup)
    return samples


def summary(ms: list[float]) -> dict[str, float]:
    """Median and p99 in ms, and how many runs they come from."""
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "runs": len(ms)}


def tvm_threads(threads: int) -> None:
    """Make TVM compute with `threads` threads, as ONNX Runtime does with `threads` intra-op threads:
    TVM sizes its pool from TVM_NUM_THREADS once, at its first parallel kernel, and by default on x86
    takes half the CPUs (one thread on a 2-core VM). Call before anything runs a TVM library."""
    import os

    os.environ["TVM_NUM_THREADS"] = str(threads)
