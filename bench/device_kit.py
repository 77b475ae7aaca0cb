"""The kit bench_cuda.py carries to a lent GPU machine (the `device` tool's `run`): made here, where the
compiler is, because that machine has Python 3.12, numpy, torch, onnx and onnxruntime but no TVM, no
edgecam dependencies and no registry to install them from, and takes at most 64 MiB per call.

    bench/.cuda-run/            (ignored by git; named in the call's `carry`)
      artifacts/<model>/        edgecam CUDA artifacts (cubin for --arch; reference.onnx inside)
      site/tvm/                 TVM's Python package and runtime libraries, without the compiler
      wheels/*.whl              cp312 wheels of what edgecam's runtime path imports and the GPU lacks

The checkout itself travels with every call: edgecam is imported from it (bench_cuda.py run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KIT = Path("bench/.cuda-run")  # relative to the checkout, as the `run` tool's carry wants it
WHEEL_CACHE = ROOT / ".cache/bench/wheels"
MODELS = ("mobilenet_v2", "fashion_cnn")
CARRY_LIMIT = 64 * 2**20  # what one `run` call takes: the checkout plus carried paths
# Imported on the runtime path (edgecam.compiler.artifact, edgecam.server.runtime.tvm) and absent
# on the GPU machine; typing-extensions travels too because pydantic needs a recent one.
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


def prepare(arch: str, cuda_graph: bool = False) -> Path:
    """Build the kit under ROOT/KIT (replacing it) and return its path."""
    kit = ROOT / KIT
    shutil.rmtree(kit, ignore_errors=True)
    (kit / "artifacts").mkdir(parents=True)
    options = {"arch": arch, "cuda_graph": cuda_graph}
    for name in MODELS:
        build_artifact(name, options, kit / "artifacts" / name)
    (kit / "target_options.json").write_text(json.dumps(options) + "\n")  # into the run's record
    copy_tvm_runtime(kit / "site" / "tvm")
    (kit / "wheels").mkdir()
    for name in WHEELS:
        shutil.copy2(wheel(name, metadata.version(name)), kit / "wheels")
    return kit


def build_artifact(name: str, options: dict[str, Any], out: Path) -> None:
    import shapes

    from edgecam.compiler.build import compile_model

    if name == "fashion_cnn":
        from edgecam.models import fashion_cnn

        model = Path(fashion_cnn.onnx_path())
    else:
        model = shapes.write(name, ROOT / ".cache/bench")
    print(f"compiling {name} for cuda {options} ...", flush=True)
    artifact = compile_model(model, "cuda", out, target_options=options)
    print(f"  {artifact.manifest.target.device_code}, {size_of(out) / 2**20:.1f} MiB", flush=True)


def copy_tvm_runtime(dest: Path) -> None:
    """The installed TVM package as a camera needs it: Python code and the runtime libraries."""
    import tvm

    source = Path(tvm.__file__).parent

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {"__pycache__"} & set(names)
        if Path(directory) == source:
            left_out |= _TVM_LEFT_OUT & set(names)
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


def run_call(runs: int) -> tuple[list[str], str]:
    """The `run` tool's carry list and command for the kit."""
    command = (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
        f"{KIT}/wheels/*.whl && PYTHONPATH={KIT}/site:/tmp/site PYTHONUNBUFFERED=1 "
        f'python3 bench/bench_cuda.py run --kit {KIT} --runs {runs} --out "$OUT"'
    )
    return [str(KIT)], command


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
