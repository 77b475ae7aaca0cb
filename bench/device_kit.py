"""The kits benchmarks carry to the lent device machine (the `device` tool's `run`): made here, where the
compiler is, because that machine has Python 3.12, numpy, torch, onnx and onnxruntime but no TVM, no
edgecam dependencies and no registry to install them from, and takes at most 64 MiB per call.

    bench/.<name>-run/          (ignored by git; named in the call's `carry`)
      artifacts/<model>/        edgecam artifacts built here for that machine
      site/tvm/                 TVM's Python package and runtime libraries, without the compiler
      wheels/*.whl              cp312 wheels of what edgecam's runtime path imports and the machine lacks

The checkout itself travels with every call: edgecam is imported from it (`edgecam_from_checkout`).
Used by bench_cuda.py (its GPU) and bench_cpu_device.py (its CPU).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEEL_CACHE = ROOT / ".cache/bench/wheels"
RTOL = 1e-3  # what the runs there accept: |edgecam - reference| ≤ RTOL × max(1, max |reference|)
CARRY_LIMIT = 64 * 2**20  # what one `run` call takes: the checkout plus carried paths
# Imported on the runtime path (edgecam.compiler.artifact, edgecam.server.runtime.tvm) and absent
# on the device machine; typing-extensions travels too because pydantic needs a recent one.
WHEELS = (
    "apache-tvm-ffi",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
)
# Parts of the TVM package only the compiler uses (libtvm_compiler.so alone is ~250 MB).
_TVM_LEFT_OUT = {"3rdparty", "include", "src", "web"}


def assemble(kit: Path, python_left_out: frozenset[str] = frozenset()) -> None:
    """Replace `kit` by an empty artifacts/ folder, TVM's runtime package and the wheels; the caller
    builds its artifacts into kit / "artifacts"."""
    shutil.rmtree(kit, ignore_errors=True)
    (kit / "artifacts").mkdir(parents=True)
    copy_tvm_runtime(kit / "site" / "tvm", python_left_out)
    (kit / "wheels").mkdir()
    for name in WHEELS:
        shutil.copy2(wheel(name, metadata.version(name)), kit / "wheels")


def copy_tvm_runtime(dest: Path, python_left_out: frozenset[str] = frozenset()) -> None:
    """The installed TVM package as a camera needs it: Python code and the runtime libraries, less the
    subpackages named in `python_left_out` (compiler-side Python a runtime-only import never reaches)."""
    import tvm

    source = Path(tvm.__file__).parent

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {"__pycache__"} & set(names)
        if Path(directory) == source:
            left_out |= (_TVM_LEFT_OUT | python_left_out) & set(names)
        if Path(directory) == source / "lib":
            left_out |= {n for n in names if n.startswith("libtvm_compiler")}
        return left_out

    shutil.copytree(source, dest, ignore=ignore)


def wheel(name: str, version: str) -> Path:
    """The CPython 3.12 x86-64 Linux wheel of name==version, downloaded once into WHEEL_CACHE."""
    stem = f"{name.replace('-', '_')}-{version}-"
    cached = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not cached:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(WHEEL_CACHE)]
        command += [arg for platform in platforms for arg in ("--platform", platform)]
        subprocess.run([*command, f"{name}=={version}"], check=True)
        cached = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if len(cached) != 1:
        raise SystemExit(f"expected one wheel of {name}=={version} in {WHEEL_CACHE}, found {cached}")
    return cached[0]


def checkout_bytes() -> int:
    """What every `run` call sends besides the carry: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    files = {ROOT / name.decode() for name in listed.split(b"\0") if name}
    return sum(path.stat().st_size for path in files if path.is_file())


def run_call(kit: Path, script: str, arguments: str) -> tuple[list[str], str]:
    """The `run` tool's carry list and command: install the kit's wheels there, then run
    `bench/<script> run --kit <kit> <arguments> --out "$OUT"` (`kit` relative to the checkout)."""
    command = (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
        f"{kit}/wheels/*.whl && PYTHONPATH={kit}/site:/tmp/site PYTHONUNBUFFERED=1 "
        f'python3 bench/{script} run --kit {kit} {arguments} --out "$OUT"'
    )
    return [str(kit)], command


def fits_one_call(kit: Path) -> bool:
    """Print what one call would send, and whether the device tool would take it."""
    kit_size, tree_size = size_of(kit), checkout_bytes()
    print(f"\nkit {kit}: {kit_size / 2**20:.1f} MiB; checkout: {tree_size / 2**20:.1f} MiB", end="")
    print(f"; one call sends {(kit_size + tree_size) / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f}")
    if kit_size + tree_size > CARRY_LIMIT:
        print("too much for one call: the device tool would refuse it", file=sys.stderr)
        return False
    return True


def edgecam_from_checkout() -> None:
    """Import edgecam from this checkout when it is not installed (the device machine): pyproject maps
    each top-level folder X to the subpackage edgecam.X, so the checkout's root joins the package's path."""
    if importlib.util.find_spec("edgecam") is not None:
        return
    sys.path.insert(0, str(ROOT))
    import edgecam

    edgecam.__path__.append(str(ROOT))


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_outputs(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> dict[str, Any]:
    """How far outputs run there are from the reference's, per sample, and whether within RTOL."""
    difference = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
    return {"max_abs_diff": difference, "scale": scale, "ok": difference <= RTOL * scale}
