"""Cumulative per-version inference statistics, the numbers OIP's ModelStatistics reports."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> Duration:
        return Duration(self.count + 1, self.ns + ns)


@dataclass(frozen=True)
class ModelStats:
    name: str
    version: str
    success: Duration = field(default_factory=Duration)  # whole request, validation to response
    fail: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)  # the runtime call alone
    last_inference_ms: int = 0


class StatisticsBook:
    """Thread-safe: requests on many gRPC worker threads record into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], ModelStats] = {}

    def record(self, name: str, version: str, ok: bool, total_ns: int, infer_ns: int | None) -> None:
        with self._lock:
            stats = self._stats.get((name, version)) or ModelStats(name, version)
            updates: dict[str, object] = {"last_inference_ms": time.time_ns() // 1_000_000}
            if ok:
                updates["success"] = stats.success.add(total_ns)
            else:
                updates["fail"] = stats.fail.add(total_ns)
            if infer_ns is not None:
                updates["compute_infer"] = stats.compute_infer.add(infer_ns)
            self._stats[(name, version)] = replace(stats, **updates)  # type: ignore[arg-type]

    def get(self, name: str, version: str) -> ModelStats:
        with self._lock:
            return self._stats.get((name, version)) or ModelStats(name, version)
