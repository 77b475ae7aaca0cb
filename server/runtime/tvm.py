"""Runtime for TVM artifacts: the Relax VM over a library exported with `export_library`.

Only the TVM *runtime* is used here (`TVM_USE_RUNTIME_LIB=1`), which is all a camera installs.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgecam import tvm_threads, weight_codec
from edgecam.compiler.artifact import Artifact, ArtifactError
from edgecam.datatypes import to_numpy
from edgecam.server.errors import ModelLoadError

_IMPORT_LOCK = threading.Lock()
# Artifact files that hold weights next to the library (the compiler may keep params outside the .so).
_PARAM_SUFFIXES = (".params", ".bin", ".npz")
_DLPACK_CPU = 1  # kDLCPU
_ALIGNMENT = 64  # bytes: what TVM's DLPack import and its generated code expect of a tensor's data


def import_tvm_runtime() -> ModuleType:
    """`import tvm` with only the runtime library loaded, without dragging torch in.

    If tvm is already imported (a process that also compiled), that module is used as it is:
    the environment variable only matters before the first import. TVM's thread pool gets one
    thread per physical core unless TVM_NUM_THREADS says otherwise (edgecam/tvm_threads.py).
    """
    with _IMPORT_LOCK:
        tvm_threads.use_physical_cores()
        if "tvm" in sys.modules:
            import tvm
            import tvm.runtime.vm  # `import tvm` does not import the VM submodule

            return tvm
        # Read once, while tvm loads its library. Restored afterwards so that child processes
        # (an `edgecam compile` started from the same process, tests) still get the full TVM.
        previous = os.environ.get("TVM_USE_RUNTIME_LIB")
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        # tvm_ffi does `try: import torch` at import time to support DLPack exchange with it. On a
        # camera torch is absent; in a dev venv it would cost ~1 s and hundreds of MB RSS in the
        # server for nothing. A None entry in sys.modules makes that import raise ImportError.
        blocked = "torch" not in sys.modules
        if blocked:
            sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tvm
            import tvm.runtime.vm
        finally:
            if blocked and sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]
            if previous is None:
                del os.environ["TVM_USE_RUNTIME_LIB"]
            else:
                os.environ["TVM_USE_RUNTIME_LIB"] = previous
        return tvm


class TvmRuntime:
    """One Relax VirtualMachine per model; `run` is serialised because the VM is not thread-safe."""

    name = "tvm"

    def __init__(self, artifact: Artifact, entry: str = "main") -> None:
        manifest = artifact.manifest
        self._tvm = import_tvm_runtime()
        self._library = artifact.library_path
        self._inputs = list(manifest.inputs)
        self._outputs = list(manifest.outputs)
        self._lock = threading.Lock()
        self._device = _device(self._tvm, artifact)  # inputs and weights go there, outputs come back
        decoded = decode_weights(artifact)  # before the library: a bad weights file is refused first
        self._vm = self._load_vm(self._library)
        try:
            self._main = self._vm[entry]
        except Exception as exc:  # tvm raises its own error types for a missing function
            raise ModelLoadError(f"{self._library} has no function {entry!r}: {exc}") from exc
        # Coded weights: TVM tensors made once here, passed after the inputs on every call.
        self._params = self._weight_tensors(decoded, artifact)
        self._staged = self._staging_tensors()
        decoded_bytes = sum(array.nbytes for array in decoded)
        self._memory = self._library.stat().st_size + _param_bytes(artifact) + decoded_bytes
        self._verify()

    def _load_vm(self, library: Path) -> Any:
        tvm = self._tvm
        check_elf(library)
        try:
            lib = tvm.runtime.load_module(str(library))
        except Exception as exc:  # a truncated/corrupt .so surfaces as tvm InternalError or ValueError
            raise ModelLoadError(f"cannot load TVM library {library}: {_last_line(exc)}") from exc
        try:
            return tvm.runtime.vm.VirtualMachine(lib, self._device)
        except Exception as exc:
            raise ModelLoadError(
                f"{library} is not a TVM Relax VM executable (exported with export_library?): "
                f"{_last_line(exc)}"
            ) from exc

    def _weight_tensors(self, decoded: list[np.ndarray], artifact: Artifact) -> list[Any]:
        tensors = [self._tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in decoded]
        coded = artifact.manifest.coded_weights
        if coded is None or coded.transform is None:
            return tensors
        try:  # weight transposes/layouts the compiler lifted out of `main`: once, at load
            return list(self._vm[coded.transform](tensors))
        except Exception as exc:
            raise ModelLoadError(
                f"{self._library}: the weight transform {coded.transform!r} failed on {coded.file}: "
                f"{_last_line(exc)}"
            ) from exc

    def _verify(self) -> None:
        """One run on zeros: proves the library executes and that it matches the manifest's shapes."""
        feeds = {
            spec.name: np.zeros([max(d, 1) for d in spec.shape], dtype=to_numpy(spec.datatype))
            for spec in self._inputs
        }
        try:
            outputs = self.run(feeds)
        except Exception as exc:
            raise ModelLoadError(
                f"{self._library} does not run with the manifest's inputs "
                f"{[(s.name, s.shape) for s in self._inputs]}: {_last_line(exc)}"
            ) from exc
        for spec in self._outputs:
            got = list(outputs[spec.name].shape)
            fits = len(got) == len(spec.shape) and all(
                e in (-1, g) for g, e in zip(got, spec.shape, strict=True)
            )
            if not fits:
                raise ModelLoadError(
                    f"{self._library} output {spec.name!r} has shape {got}; the manifest says {spec.shape}"
                )

    def _staging_tensors(self) -> list[tuple[np.ndarray, Any] | None]:
        """Per input of static shape on the CPU: a 64-byte aligned numpy buffer and the TVM tensor
        viewing it (DLPack, no copy). A call copies its input there: `tvm.runtime.tensor(array)` and
        `.numpy()` cost 20-60 µs each, a tenth of the bundled CNN's inference."""
        if self._device.dlpack_device_type() != _DLPACK_CPU:
            return [None] * len(self._inputs)
        staged: list[tuple[np.ndarray, Any] | None] = []
        for spec in self._inputs:
            if any(d < 0 for d in spec.shape):
                staged.append(None)
                continue
            buffer = _aligned_empty(spec.shape, to_numpy(spec.datatype))
            staged.append((buffer, self._tvm.runtime.from_dlpack(buffer)))
        return staged

    def _arguments(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """The inputs as TVM tensors: copied into their staging buffer where the shape and type match
        it, else (dynamic shapes, another device, a mismatch TVM will report) into a new tensor."""
        args = []
        for spec, staged in zip(self._inputs, self._staged, strict=True):
            value = inputs[spec.name]
            if staged is not None and value.shape == staged[0].shape and value.dtype == staged[0].dtype:
                np.copyto(staged[0], value)
                args.append(staged[1])
            else:
                args.append(self._tvm.runtime.tensor(np.ascontiguousarray(value), self._device))
        return args

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:  # the staging buffers are shared between calls too
            result = self._main(*self._arguments(inputs), *self._params)
            values = _flatten(result)
        if len(values) != len(self._outputs):
            raise RuntimeError(
                f"{self._library} returned {len(values)} outputs; the manifest lists {len(self._outputs)}"
            )
        return {spec.name: value for spec, value in zip(self._outputs, values, strict=True)}

    def memory_bytes(self) -> int:
        return self._memory


def _device(tvm: ModuleType, artifact: Artifact) -> Any:
    """Where the artifact's code runs: the CPU, or the first CUDA GPU when it can run the cubin."""
    target = artifact.manifest.target
    if target.device == "cpu":
        return tvm.cpu()
    code = (target.device_code or "").split()
    if target.device != "cuda" or len(code) != 2 or code[0] != "cubin":
        raise ModelLoadError(
            f"artifact {artifact.path} holds {target.device_code or 'CUDA source'} for {target.device!r}; "
            "this server runs CPU code and CUDA cubins (CUDA source would need NVRTC on the camera): "
            "recompile it with this edgecam (edgecam compile --target cuda --arch sm_NN)"
        )
    load_cuda_runtime(tvm)
    device = tvm.cuda(0)
    if not device.exist:
        raise ModelLoadError(f"artifact {artifact.path} needs an NVIDIA GPU; TVM's CUDA runtime finds none")
    _check_compute_capability(artifact.path, code[1], str(device.compute_version))
    return device


def load_cuda_runtime(tvm: ModuleType) -> None:
    """Load TVM's CUDA runtime library (the CUDA device, the cubin loader), which `import tvm` in
    runtime-only mode leaves out. Global, as TVM's runtime itself is, so its symbols resolve."""
    from tvm_ffi.libinfo import load_lib_ctypes

    with _IMPORT_LOCK:
        loaded = tvm.base._LOADED_LIBS
        if "tvm_runtime_cuda" in loaded:
            return
        runtime_dir = Path(loaded["tvm_runtime"]._name).resolve().parent
        try:
            loaded["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm",
                target_name="tvm_runtime_cuda",
                mode="RTLD_GLOBAL",
                extra_lib_paths=[runtime_dir],
            )
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"cannot load TVM's CUDA runtime library: {exc}; it needs the NVIDIA driver (libcuda.so.1) "
                "and the CUDA 13 runtime (libcudart.so.13) on the library path"
            ) from exc


def _check_compute_capability(path: Path, arch: str, compute_version: str) -> None:
    """A cubin for sm_XY runs on GPUs of compute capability X.Z with Z >= Y, and on no other."""
    built = arch.removeprefix("sm_")
    major, _, minor = compute_version.partition(".")
    if not (built.isdigit() and major.isdigit() and minor.isdigit()):
        raise ModelLoadError(
            f"artifact {path}: cannot compare {arch} with compute capability {compute_version}"
        )
    if built[:-1] != major or int(built[-1]) > int(minor):
        raise ModelLoadError(
            f"artifact {path} holds a cubin for {arch}; this GPU is compute capability {compute_version}, "
            f"which cannot run it: recompile with edgecam compile --target cuda --arch sm_{major}{minor}"
        )


def _flatten(result: Any) -> list[np.ndarray]:
    """VM results are a tensor or a (nested) tuple of tensors; copy them out as numpy arrays (through
    DLPack on the CPU: 1 µs where `.numpy()` takes 20)."""
    if hasattr(result, "numpy"):
        if result.device.dlpack_device_type() == _DLPACK_CPU:
            return [np.from_dlpack(result).copy()]
        return [result.numpy()]
    if isinstance(result, (list, tuple)) or hasattr(result, "__len__"):
        return [array for item in result for array in _flatten(item)]
    raise TypeError(f"unexpected VM result of type {type(result).__name__}")


def _aligned_empty(shape: list[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an _ALIGNMENT-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def check_elf(path: Path) -> None:
    """Refuse a truncated shared library before dlopen: mapping past its end kills us with SIGBUS.

    The artifact's sha256 check catches corruption after compile; this catches a library that
    was already cut short when it was hashed (a full disk during export, a partial copy).
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise ModelLoadError(f"TVM library {path} is not an ELF shared library")
    bits64, little = data[4] == 2, data[5] == 1
    order = "<" if little else ">"
    if bits64:
        phoff, shoff = struct.unpack_from(order + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 0x36)
    else:
        phoff, shoff = struct.unpack_from(order + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 0x2A)
    ends = [phoff + phentsize * phnum, shoff + shentsize * shnum]
    for i in range(phnum):
        entry = phoff + i * phentsize
        if entry + phentsize > len(data):
            break  # reported below through `ends`
        if bits64:
            offset, filesz = struct.unpack_from(order + "8xQ16xQ", data, entry)
        else:
            offset, filesz = struct.unpack_from(order + "4xI8xI", data, entry)
        ends.append(offset + filesz)
    if max(ends) > len(data):
        raise ModelLoadError(
            f"TVM library {path} is truncated: {len(data)} bytes, its headers need {max(ends)}; "
            "re-export or re-copy the artifact"
        )


def decode_weights(artifact: Artifact) -> list[np.ndarray]:
    """The artifact's coded weights, decoded in the order the library takes them (none: empty)."""
    coded = artifact.manifest.coded_weights
    if coded is None:
        return []
    path = artifact.path / coded.file
    if coded.codec != weight_codec.CODEC:
        raise ArtifactError(
            "coded_weights", f"{path} uses codec {coded.codec!r}; this runtime decodes {weight_codec.CODEC!r}"
        )
    try:
        blobs = weight_codec.read_bundle(path)
    except weight_codec.WeightCodecError as exc:
        raise ArtifactError("coded_weights", f"{path}: {exc}") from exc
    if list(blobs) != coded.params:
        raise ArtifactError("coded_weights", f"{path} holds {list(blobs)}; the manifest lists {coded.params}")
    arrays = []
    for name in coded.params:
        try:
            arrays.append(weight_codec.decode(blobs[name]))
        except weight_codec.WeightCodecError as exc:
            raise ArtifactError("coded_weights", f"{path}, tensor {name!r}: {exc}") from exc
    return arrays


def _param_bytes(artifact: Artifact) -> int:
    return sum(
        (artifact.path / name).stat().st_size
        for name in artifact.manifest.files
        if name != artifact.manifest.library and name.endswith(_PARAM_SUFFIXES)
    )


def _last_line(exc: BaseException) -> str:
    """TVM errors carry a C++ backtrace; the last line is the message an operator needs."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
