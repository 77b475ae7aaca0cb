"""Run an aarch64 library on an x86 workstation under qemu-user, to verify it against ONNX Runtime.

qemu-user executes one aarch64 program with the aarch64 libraries of Debian's cross toolchain
(/usr/aarch64-linux-gnu) as its root, so neither binfmt nor an arm64 root file system is needed.
The program is vm_runner.cc: a small C++ runner on TVM's runtime (libtvm_runtime.so and
libtvm_ffi.so from the aarch64 wheels of the same apache-tvm / apache-tvm-ffi versions that
compiled the library), built with the cross g++ on first use. Both are cached under
~/.cache/edgecam/aarch64-runner, keyed by the TVM versions and the runner's source.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgecam.compiler.errors import EmulatorError

QEMU = ("qemu-aarch64-static", "qemu-aarch64")  # Debian qemu-user-static, qemu-user
# Debian's static qemu is built without TCG plugin support; the dynamic one (qemu-user) has it.
PLUGIN_QEMU = "qemu-aarch64"
CROSS_CXX = "aarch64-linux-gnu-g++"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's cross libc and libstdc++ (the *-arm64-cross packages)
APT_PACKAGES = "qemu-user-static g++-aarch64-linux-gnu"
RUNNER_SOURCE = Path(__file__).with_name("vm_runner.cc")
RUNNER_NAME = "vm_runner"
# A wheel's libraries run on any glibc >= the tag's; TVM's aarch64 wheels are tagged manylinux_2_28.
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
TIMEOUT_SECONDS = 1800  # a whole verification run: emulation is 10-50x slower than native


def missing_tools() -> list[str]:
    """What this host lacks to run aarch64 libraries (empty when it has everything)."""
    missing = [] if any(shutil.which(q) for q in QEMU) else [QEMU[0]]
    if shutil.which(CROSS_CXX) is None:
        missing.append(CROSS_CXX)
    for library in ("ld-linux-aarch64.so.1", "libstdc++.so.6"):
        if not (SYSROOT / "lib" / library).exists():
            missing.append(str(SYSROOT / "lib" / library))
    return missing


def qemu_cpu(mcpu: str, mattr: Sequence[str]) -> str:
    """The CPU qemu emulates: the target core itself when qemu models it, so an instruction that core
    lacks faults here as it would on the camera; qemu's `max` when features are added on top."""
    if any(attr.startswith("+") for attr in mattr) or mcpu not in _qemu_cpus():
        return "max"
    return mcpu


def run_library(
    library: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    input_names: list[str],
    params: Sequence[np.ndarray] = (),
    transform: str | None = None,
    cpu: str = "max",
    plugin: str | None = None,
) -> list[list[np.ndarray]]:
    """Outputs of the aarch64 `library` on `feeds`, as verify.run_library returns them natively:
    `params` follow the inputs of `main`, through `transform` first when given. `cpu`: qemu's -cpu;
    `plugin`: a TCG plugin and its arguments for qemu's -plugin (bench/bench_arm.py counts
    instructions with one)."""
    missing = missing_tools()
    if missing:
        raise EmulatorError(
            f"running aarch64 code on this host needs qemu-user and the aarch64 cross toolchain; "
            f"missing: {', '.join(missing)}. On Debian: apt-get install {APT_PACKAGES}"
        )
    runner = runner_path()
    with tempfile.TemporaryDirectory(prefix="edgecam-qemu-") as tmp:
        work = Path(tmp)
        for j, value in enumerate(params):
            np.save(work / f"param_{j}.npy", np.ascontiguousarray(value))
        for i, feed in enumerate(feeds):
            for k, name in enumerate(input_names):
                np.save(work / f"sample_{i}_input_{k}.npy", np.ascontiguousarray(feed[name]))
        args = [str(library), str(work), str(len(feeds)), str(len(input_names)), str(len(params))]
        _emulate(runner, [*args, *([transform] if transform else [])], cpu, plugin)
        return [_outputs(work, i) for i in range(len(feeds))]


def _outputs(work: Path, sample: int) -> list[np.ndarray]:
    outputs: list[np.ndarray] = []
    while (path := work / f"sample_{sample}_output_{len(outputs)}.npy").exists():
        outputs.append(np.load(path))
    return outputs


def _emulate(runner: Path, args: list[str], cpu: str, plugin: str | None = None) -> None:
    qemu = next(q for q in QEMU if shutil.which(q))
    if plugin is not None:
        if shutil.which(PLUGIN_QEMU) is None:
            raise EmulatorError(
                f"a TCG plugin needs {PLUGIN_QEMU} with plugin support: apt-get install qemu-user"
            )
        qemu = PLUGIN_QEMU
    command = [
        qemu,
        *(["-plugin", plugin] if plugin else []),
        "-L",
        str(SYSROOT),
        "-cpu",
        cpu,
        str(runner),
        *args,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise EmulatorError(
            f"the library did not finish under qemu within {TIMEOUT_SECONDS} s; verify with fewer samples"
        ) from None
    if done.returncode == -4:  # SIGILL
        raise EmulatorError(
            f"the library executed an instruction the emulated CPU ({cpu}) does not have: "
            "the target's mcpu/mattr enable an extension that core lacks"
        )
    if done.returncode != 0:
        raise EmulatorError(
            f"the library failed under qemu-aarch64 (exit status {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )


@functools.cache
def _qemu_cpus() -> frozenset[str]:
    qemu = next((q for q in QEMU if shutil.which(q)), None)
    if qemu is None:
        return frozenset()
    listing = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.split()[0] for line in listing.splitlines()[1:] if line.strip())


def cache_root() -> Path:
    """~/.cache/edgecam/aarch64-runner (or under $XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecam" / "aarch64-runner"


def runner_path() -> Path:
    """The cross-compiled runner, built on first use next to the runtime it links."""
    runtime = runtime_dir()
    key = hashlib.sha256(RUNNER_SOURCE.read_bytes() + _cxx_version().encode()).hexdigest()[:16]
    runner = runtime.parent / f"runner-{key}" / RUNNER_NAME
    if runner.exists():
        return runner
    with tempfile.TemporaryDirectory(dir=runtime.parent, prefix=".build-") as tmp:
        built = Path(tmp) / "runner" / RUNNER_NAME
        built.parent.mkdir()
        command = [
            CROSS_CXX, "-std=c++17", "-O2", f"-I{runtime / 'include'}", "-o", str(built), str(RUNNER_SOURCE),
            f"-L{runtime / 'lib'}",
            # libtvm_runtime registers the VM and the backend functions the model library calls;
            # nothing in the runner references it by name, so keep the linker from dropping it.
            "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN/../runtime/lib",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EmulatorError(f"building the aarch64 runner failed: {done.stderr.strip()[-2000:]}")
        _publish(built.parent, runner.parent)
    return runner


def runtime_dir() -> Path:
    """The aarch64 TVM runtime libraries and tvm-ffi headers, extracted from PyPI's aarch64 wheels
    of the installed versions (one download, then cached)."""
    tvm_version = importlib.metadata.version("apache-tvm")
    ffi_version = importlib.metadata.version("apache-tvm-ffi")
    runtime = cache_root() / f"tvm-{tvm_version}-ffi-{ffi_version}" / "runtime"
    if (runtime / "lib" / "libtvm_runtime.so").exists():
        return runtime
    runtime.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=runtime.parent, prefix=".download-") as tmp:
        wheels = Path(tmp) / "wheels"
        download_wheels([f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"], wheels)
        staging = Path(tmp) / "runtime"
        extract_from_wheel(
            next(wheels.glob("apache_tvm-*.whl")), {"tvm/lib/libtvm_runtime.so": "lib"}, staging
        )
        extract_from_wheel(
            next(wheels.glob("apache_tvm_ffi-*.whl")),
            {"tvm_ffi/lib/libtvm_ffi.so": "lib", "tvm_ffi/include/": "include"},
            staging,
        )
        _publish(staging, runtime)
    return runtime


def download_wheels(requirements: list[str], into: Path) -> None:
    """pip-download the manylinux aarch64 wheels of `requirements` (no dependencies) into `into`."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    python = f"{sys.version_info.major}{sys.version_info.minor}"
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        *platforms, "--python-version", python, "--implementation", "cp", "--dest", str(into), *requirements,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EmulatorError(
            f"downloading the aarch64 wheels {' '.join(requirements)} failed: "
            f"{done.stderr.strip()[-1500:]}. It needs the package index pip uses; offline, point "
            "PIP_FIND_LINKS at a folder holding those manylinux aarch64 wheels"
        )


def extract_from_wheel(wheel: Path, members: Mapping[str, str], into: Path) -> None:
    """Copy `members` of `wheel` (a file, or a folder when it ends in /) into `into`/<their value>."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            for member, folder in members.items():
                if name.endswith("/") or not (
                    name == member or (member.endswith("/") and name.startswith(member))
                ):
                    continue
                relative = Path(name).name if name == member else name[len(member) :]
                target = into / folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink)


def _publish(staging: Path, final: Path) -> None:
    """Move a finished directory into the cache atomically; a concurrent build that won keeps its copy."""
    try:
        staging.rename(final)
    except OSError:
        if not final.exists():
            raise


@functools.cache
def _cxx_version() -> str:
    return subprocess.run([CROSS_CXX, "--version"], capture_output=True, text=True, check=False).stdout
