"""Compiled device code for CUDA artifacts: the kernels go into the library as a cubin made by nvcc at
build time, so loading one needs only the CUDA driver (no NVRTC, no CUDA toolkit on the camera).

TVM 0.27's CUDA codegen hands its kernels' *source* to a module factory. On a host without the CUDA
driver that factory keeps the source, and `export_library` serializes it with format "cuda"; the
loader then compiles it through the global `tvm_callback_cuda_compile` (NVRTC, Python) on every load.
With the driver present it compiles at build time instead, through that same callback. Either way
the stock path gives no control over the compiler, and the fallback module cannot be built from
Python. So edgecam packs the library's imports itself (`export_library(fpack_imports=...)`): it
serializes the module tree as TVM does (`runtime.ModulePackImportsToTensor`), swaps each CUDA
module's source for the cubin nvcc makes of it, and turns the bytes into an object file with TVM's
own `codegen.codegen_blob`.

The CUDA module's serialized layout (src/runtime/cuda/cuda_module.cc, SaveToBytes) is
`[fmt: str][fmap][code: bytes]`, strings and byte strings as a little-endian u64 length and the bytes;
the loader hands `code` to `cuModuleLoadData` whatever `fmt` says, and JIT-compiles only when
`fmt == "cuda"`. Every step checks what it expects and names what it found otherwise.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecam.compiler.errors import BuildError

EM_CUDA = 190  # ELF e_machine of a cubin
_SOURCE_FORMAT = b"cuda"
_CUBIN_FORMAT = b"cubin"
_CUDA_KIND = b"cuda"
_DSO_PLACEHOLDER = b"_lib"  # where the host library itself sits in the import tree
# The CUDA ABI version byte of a cubin's ELF header: 0x41 (CUDA 12.8+, nvcc 13) keeps the SM number in
# e_flags bits 8-15; the older 0x33 ABI in bits 0-7.
_OSABI_SM_SHIFT = {0x41: 8, 0x33: 0}


def compile_cubin(source: str, target: Any) -> bytes:
    """Compile the kernels' CUDA `source` into a cubin for `target`'s arch with nvcc (through TVM's own
    wrapper, so the flags match what TVM uses: -O3, fast math, half/bfloat16 operators)."""
    from tvm.support.nvcc import compile_cuda

    arch = str(target.attrs["arch"])
    if shutil.which("nvcc") is None:
        raise BuildError(
            f"nvcc is not on PATH: a CUDA artifact carries a cubin compiled at build time for {arch}; "
            "install the CUDA toolkit (its nvcc) and put its bin/ on PATH"
        )
    with target:  # compile_cuda reads the compute version from the current target
        try:
            return bytes(compile_cuda(source, target_format="cubin", arch=arch, compiler="nvcc"))
        except RuntimeError as exc:
            # TVM puts the whole generated source before nvcc's output; the output is what helps.
            output = str(exc).rpartition("Compilation error:")[2].strip()
            raise BuildError(
                f"nvcc could not compile the kernels for {arch}: {output[-2000:]}; "
                "CUDA 13's nvcc builds sm_75 and newer, older GPUs need an older toolkit's nvcc on PATH"
            ) from exc


def cubin_packer(target: Any) -> Callable[[Any, bool, str, str], str]:
    """An `fpack_imports` for `export_library`: the import tree as TVM packs it, with every CUDA module
    holding a cubin for `target`'s arch instead of source."""

    def pack(module: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        import tvm

        sources = [m.inspect_source("cuda") for m in _cuda_modules(module)]
        packed = tvm.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy().tobytes()
        blob = with_cubins(packed, sources, lambda source: compile_cubin(source, target))
        to_object = tvm.get_global_func("codegen.codegen_blob")
        path = os.path.join(workspace_dir, f"{prefix}devc.o")
        to_object(blob, is_system_lib, _llvm_target(module), prefix).write_to_file(path)
        return path

    return pack


def with_cubins(packed: bytes, sources: list[str], compile: Callable[[str], bytes]) -> bytes:
    """`packed` (TVM's library blob: u64 size, import tree, modules) with each CUDA module's source,
    one of `sources`, replaced by `compile(source)` and its format by "cubin"."""
    reader = _Reader(packed)
    if reader.u64() != len(packed) - 8:
        raise BuildError("TVM's packed imports do not start with their own size; cannot embed the cubin")
    row_ptr = reader.u64_vector()
    reader.u64_vector()  # child indices: kept as they are
    out = bytearray(packed[: reader.offset])
    replaced = 0
    for _ in range(len(row_ptr) - 1):
        kind = reader.bytes()
        out += _bytes(kind)
        if kind == _DSO_PLACEHOLDER:
            continue
        payload = reader.bytes()
        if kind == _CUDA_KIND:
            payload = _cubin_payload(payload, sources, compile)
            replaced += 1
        out += _bytes(payload)
    if reader.offset != len(packed):
        raise BuildError(f"TVM's packed imports have {len(packed) - reader.offset} unread bytes at the end")
    if replaced != len(sources):
        raise BuildError(
            f"found {replaced} CUDA modules in the packed imports; the module tree has {len(sources)}"
        )
    out[:8] = struct.pack("<Q", len(out) - 8)
    return bytes(out)


def cubin_archs(data: bytes) -> list[str]:
    """The SM arch (e.g. "sm_90") of every cubin embedded in `data` (a library, a blob), in order."""
    archs = []
    start = data.find(b"\x7fELF", 1)
    while start != -1:
        arch = cubin_arch(data[start : start + 64])
        if arch is not None:
            archs.append(arch)
        start = data.find(b"\x7fELF", start + 1)
    return archs


def cubin_arch(header: bytes) -> str | None:
    """ "sm_NN" if `header` starts a 64-bit little-endian CUDA ELF (a cubin), else None."""
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        return None
    (machine,) = struct.unpack_from("<H", header, 18)
    shift = _OSABI_SM_SHIFT.get(header[7])
    if machine != EM_CUDA or shift is None:
        return None
    (flags,) = struct.unpack_from("<I", header, 48)
    return f"sm_{(flags >> shift) & 0xFF}"


def check_library(path: Path, arch: str) -> None:
    """The exported library must hold a cubin for `arch` and no CUDA source (which would need NVRTC)."""
    data = path.read_bytes()
    archs = cubin_archs(data)
    if not archs or set(archs) != {arch}:
        raise BuildError(f"{path.name} should embed cubins for {arch} only; it embeds {archs or 'none'}")
    if b"__global__" in data:
        raise BuildError(f"{path.name} still embeds CUDA source, which a camera would compile with NVRTC")


def _cubin_payload(payload: bytes, sources: list[str], compile: Callable[[str], bytes]) -> bytes:
    reader = _Reader(payload)
    fmt = reader.bytes()
    if fmt != _SOURCE_FORMAT:
        raise BuildError(
            f"TVM's CUDA module holds format {fmt.decode(errors='replace')!r}, not CUDA source; "
            "edgecam builds with TVM_COMPILE_FORCE_FALLBACK=1 so that it is source"
        )
    for source in sources:
        code = source.encode()
        if payload.endswith(_bytes(code)):
            fmap = payload[reader.offset : len(payload) - len(code) - 8]
            return _bytes(_CUBIN_FORMAT) + fmap + _bytes(compile(source))
    raise BuildError(
        "a packed CUDA module does not end with its module's CUDA source; cannot embed the cubin"
    )


def _cuda_modules(module: Any) -> list[Any]:
    return list(module._collect_from_import_tree(lambda m: m.kind == "cuda"))


def _llvm_target(module: Any) -> str:
    """The host library's LLVM target, which the blob's object file must match (as export_library does)."""
    for dso in module._collect_dso_modules():
        if dso.kind == "llvm":
            return str(dso.get_function("_get_target_string")())
    raise BuildError("the executable has no LLVM host module to link the cubin into")


def _bytes(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def u64(self) -> int:
        if self.offset + 8 > len(self.data):
            raise BuildError(f"TVM's packed imports end early at byte {self.offset}; cannot embed the cubin")
        (value,) = struct.unpack_from("<Q", self.data, self.offset)
        self.offset += 8
        return int(value)

    def u64_vector(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]

    def bytes(self) -> bytes:
        size = self.u64()
        if self.offset + size > len(self.data):
            raise BuildError(f"TVM's packed imports end early at byte {self.offset}; cannot embed the cubin")
        value = self.data[self.offset : self.offset + size]
        self.offset += size
        return value
