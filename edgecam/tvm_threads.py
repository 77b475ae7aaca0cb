"""How many threads TVM's runtime computes with: one per physical core this process may use.

TVM sizes its thread pool once, when the first parallel kernel runs, from TVM_NUM_THREADS; without it,
on x86 it takes half the logical CPUs (it assumes two hyper-threads per core). On a 2-core camera or
VM whose cores are not hyper-threads that is one thread: seen on a 2-core znver3 VM, MobileNetV2
ran in 10 ms where 2 threads take 5 ms. ONNX Runtime's default is one thread per physical core; so
is edgecam's.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "TVM_NUM_THREADS"
_SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(sys_cpu: Path = _SYS_CPU) -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core count
    once); the CPU count when the topology is not readable."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores)


def use_physical_cores() -> int:
    """Set TVM_NUM_THREADS to the physical core count unless it is set already (an operator's or a
    benchmark's choice wins); returns the thread count TVM will use. Call before TVM's first
    parallel kernel: the pool is sized then, and later changes of the variable do nothing."""
    if not os.environ.get(VARIABLE, "").strip().isdigit():
        os.environ[VARIABLE] = str(physical_cores())
    return int(os.environ[VARIABLE])
