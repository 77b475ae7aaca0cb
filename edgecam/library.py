"""Run a compiled library: the Relax VM over a library exported with `export_library`.

The one implementation the camera (server/runtime/tvm.py), compile-time verification
(compiler/verify.py) and the compression report's latency (compiler/evaluate.py) all run, so what is
verified and timed is what a camera executes: inputs copied into 64-byte aligned staging buffers
that TVM views through DLPack, weights passed after the inputs (through the library's weight
transform once), outputs copied out through DLPack.

Only the TVM *runtime* is needed (`TVM_USE_RUNTIME_LIB=1`), which is all a camera installs.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgecam import tvm_threads
from edgecam.datatypes import to_numpy
from edgecam.model import TensorSpec

IMPORT_LOCK = threading.Lock()
_DLPACK_CPU = 1  # kDLCPU
_ALIGNMENT = 64  # bytes: what TVM's DLPack import and its generated code expect of a tensor's data


class LibraryError(Exception):
    """A library that cannot be loaded or run; the message names the file and what to do."""


def import_tvm_runtime() -> ModuleType:
    """`import tvm` with only the runtime library loaded, without dragging torch in.

    If tvm is already imported (a process that also compiled), that module is used as it is:
    the environment variable only matters before the first import. TVM's thread pool gets one
    thread per physical core unless TVM_NUM_THREADS says otherwise (edgecam/tvm_threads.py).
    """
    with IMPORT_LOCK:
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


class CompiledLibrary:
    """One Relax VirtualMachine over `library` on `device` (None: the CPU). `run` is serialised: the
    VM and the staging buffers are shared between calls.

    `inputs`: the tensors `main` takes, in order; `params`: weights passed after them on every call
    (an artifact's coded weights, decoded), first through the library function `transform` when given.
    """

    def __init__(
        self,
        library: Path,
        inputs: Sequence[TensorSpec],
        device: Any = None,
        params: Sequence[np.ndarray] = (),
        transform: str | None = None,
        entry: str = "main",
    ) -> None:
        self.tvm = import_tvm_runtime()
        self.library = Path(library)
        self.inputs = list(inputs)
        self.device = self.tvm.cpu() if device is None else device
        self._lock = threading.Lock()
        self._vm = self._load_vm()
        try:
            self._main = self._vm[entry]
        except Exception as exc:  # tvm raises its own error types for a missing function
            raise LibraryError(f"{self.library} has no function {entry!r}: {last_line(exc)}") from exc
        self._params = self._weight_tensors(params, transform)
        self._staged = self._staging_tensors()

    def _load_vm(self) -> Any:
        check_elf(self.library)
        try:
            lib = self.tvm.runtime.load_module(str(self.library))
        except Exception as exc:  # a truncated/corrupt .so surfaces as tvm InternalError or ValueError
            raise LibraryError(f"cannot load TVM library {self.library}: {last_line(exc)}") from exc
        try:
            return self.tvm.runtime.vm.VirtualMachine(lib, self.device)
        except Exception as exc:
            raise LibraryError(
                f"{self.library} is not a TVM Relax VM executable (exported with export_library?): "
                f"{last_line(exc)}"
            ) from exc

    def _weight_tensors(self, params: Sequence[np.ndarray], transform: str | None) -> list[Any]:
        tensors = [self.tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in params]
        if transform is None:
            return tensors
        try:  # weight transposes/layouts the compiler lifted out of `main`: once, at load
            return list(self._vm[transform](tensors))
        except Exception as exc:
            raise LibraryError(
                f"{self.library}: the weight transform {transform!r} failed: {last_line(exc)}"
            ) from exc

    def _staging_tensors(self) -> list[tuple[np.ndarray, Any] | None]:
        """Per input of static shape on the CPU: a 64-byte aligned numpy buffer and the TVM tensor
        viewing it (DLPack, no copy). A call copies its input there: `tvm.runtime.tensor(array)` and
        `.numpy()` cost 20-60 µs each, a tenth of the bundled CNN's inference."""
        if self.device.dlpack_device_type() != _DLPACK_CPU:
            return [None] * len(self.inputs)
        staged: list[tuple[np.ndarray, Any] | None] = []
        for spec in self.inputs:
            # Open dimensions have no buffer size; empty tensors no data TVM accepts as aligned.
            if any(d <= 0 for d in spec.shape):
                staged.append(None)
                continue
            buffer = _aligned_empty(spec.shape, to_numpy(spec.datatype))
            staged.append((buffer, self.tvm.runtime.from_dlpack(buffer)))
        return staged

    def _arguments(self, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """The inputs as TVM tensors: copied into their staging buffer where the shape and type match
        it, else (dynamic shapes, another device, a mismatch TVM will report) into a new tensor."""
        args = []
        for spec, staged in zip(self.inputs, self._staged, strict=True):
            value = inputs[spec.name]
            if staged is not None and value.shape == staged[0].shape and value.dtype == staged[0].dtype:
                np.copyto(staged[0], value)
                args.append(staged[1])
            else:
                args.append(self.tvm.runtime.tensor(np.ascontiguousarray(value), self.device))
        return args

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """`main` on `inputs` (by input name): its outputs in order, as arrays the caller owns."""
        with self._lock:
            result = self._main(*self._arguments(inputs), *self._params)
            return _flatten(result)


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
        raise LibraryError(f"TVM library {path} is not an ELF shared library")
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
        raise LibraryError(
            f"TVM library {path} is truncated: {len(data)} bytes, its headers need {max(ends)}; "
            "re-export or re-copy the artifact"
        )


def last_line(exc: BaseException) -> str:
    """TVM errors carry a C++ backtrace; the last line is the message an operator needs."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
