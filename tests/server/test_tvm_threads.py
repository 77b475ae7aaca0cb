"""How many threads TVM computes with (edgecam/tvm_threads.py): one per physical core, whatever TVM's
own default (half the CPUs on x86) would be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecam import tvm_threads


def _topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """A fake /sys/devices/system/cpu: cpu N → (package, core)."""
    for cpu, (package, core) in cores.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.mark.usefixtures("two_cpus")
def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    assert tvm_threads.physical_cores(_topology(tmp_path, {0: (0, 0), 1: (0, 0)})) == 1


@pytest.mark.usefixtures("two_cpus")
def test_separate_cores_count_each(tmp_path: Path) -> None:
    assert tvm_threads.physical_cores(_topology(tmp_path, {0: (0, 0), 1: (0, 1)})) == 2


@pytest.mark.usefixtures("two_cpus")
def test_an_unreadable_topology_counts_cpus(tmp_path: Path) -> None:
    assert tvm_threads.physical_cores(tmp_path / "missing") == 2


def test_an_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tvm_threads.VARIABLE, "3")
    assert tvm_threads.use_physical_cores() == 3 and os.environ[tvm_threads.VARIABLE] == "3"


def test_unset_it_becomes_the_physical_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tvm_threads.VARIABLE, raising=False)
    assert tvm_threads.use_physical_cores() == tvm_threads.physical_cores()
    assert os.environ[tvm_threads.VARIABLE] == str(tvm_threads.physical_cores())


def test_the_camera_runtime_computes_on_every_physical_core() -> None:
    # In a fresh process, as on a camera: TVM's pool is sized when the runtime is imported.
    code = (
        "from edgecam.server.runtime.tvm import import_tvm_runtime\n"
        "print(import_tvm_runtime().get_global_func('runtime.NumThreads')())"
    )
    env = {k: v for k, v in os.environ.items() if k != tvm_threads.VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout.split()[-1]) == tvm_threads.physical_cores()
