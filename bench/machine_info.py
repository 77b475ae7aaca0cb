"""What every benchmark records about the machine it ran on, so results from different hosts are not
compared by mistake (imported by the bench scripts, which run with bench/ on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
# ISA extensions that decide fp32/int8 kernel speed on x86 (VNNI: int8 dot products).
_ISA = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "asimd", "asimddp", "i8mm"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def machine(**extra: Any) -> dict[str, Any]:
    """Host, CPU, ISA, cores, Python, load before the run, plus `extra` (library versions, threads)."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "isa": sorted(cpu_flags() & _ISA),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "loadavg_before": round(os.getloadavg()[0], 2),
        **extra,
    }


def stamp() -> tuple[str, str]:
    """(ISO time, YYYYMMDD) in UTC, for the record and its file name."""
    now = datetime.now(UTC)
    return now.isoformat(timespec="seconds"), now.strftime("%Y%m%d")


def save_record(benchmark: str, record: dict[str, Any], suffix: str = "") -> Path:
    """Write `record` to bench/results/<benchmark>-<YYYYMMDD>-<host><suffix>.json, or, when a run of the
    same day already wrote that, to ...<suffix>-2.json, -3, ...: no record is overwritten. Returns the
    path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{benchmark}-{stamp()[1]}-{socket.gethostname() or 'host'}{suffix}"
    out, runs = RESULTS / f"{stem}.json", 1
    while out.exists():
        runs += 1
        out = RESULTS / f"{stem}-{runs}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def peak_gflops(cores: int | None = None) -> float:
    """Theoretical fp32 peak of this CPU, GFLOP/s: cores × clock × FLOPs per cycle per core.

    FLOPs per cycle assume two FMA pipes of the widest vector the CPU has (AVX-512: 2×16×2 = 64,
    AVX2+FMA: 2×8×2 = 32, else SSE 2×4×2 = 16) at the clock /proc/cpuinfo reports (in a VM, the
    host's nominal clock). Boost clocks run above it, so a kernel can show more than 100%; a yardstick
    for comparing engines on one machine, not a measurement.
    """
    flags = cpu_flags()
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    mhz = 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":", 1)[1])
            break
    return (cores or os.cpu_count() or 1) * mhz / 1000.0 * per_cycle
