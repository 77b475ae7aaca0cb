"""Runtime for TVM artifacts: an artifact's library on its device, through edgecam/library.py.

Only the TVM *runtime* is used here (`TVM_USE_RUNTIME_LIB=1`), which is all a camera installs.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgecam import weight_codec
from edgecam.compiler.artifact import Artifact, ArtifactError
from edgecam.datatypes import to_numpy
from edgecam.library import IMPORT_LOCK, CompiledLibrary, LibraryError, import_tvm_runtime, last_line
from edgecam.server.errors import ModelLoadError

# Artifact files that hold weights next to the library (the compiler may keep params outside the .so).
_PARAM_SUFFIXES = (".params", ".bin", ".npz")


class TvmRuntime:
    """An artifact's library on its device (edgecam/library.py runs it, as verification did), its
    coded weights decoded, checked at load against the manifest."""

    name = "tvm"

    def __init__(self, artifact: Artifact, entry: str = "main") -> None:
        manifest = artifact.manifest
        tvm = import_tvm_runtime()
        self._path = artifact.library_path
        self._inputs = list(manifest.inputs)
        self._outputs = list(manifest.outputs)
        device = _device(tvm, artifact)  # inputs and weights go there, outputs come back
        decoded = decode_weights(artifact)  # before the library: a bad weights file is refused first
        coded = manifest.coded_weights
        try:
            self._library = CompiledLibrary(
                self._path, self._inputs, device, decoded, coded.transform if coded else None, entry
            )
        except LibraryError as exc:
            raise ModelLoadError(str(exc)) from exc
        decoded_bytes = sum(array.nbytes for array in decoded)
        self._memory = self._path.stat().st_size + _param_bytes(artifact) + decoded_bytes
        self._verify()

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
                f"{self._path} does not run with the manifest's inputs "
                f"{[(s.name, s.shape) for s in self._inputs]}: {last_line(exc)}"
            ) from exc
        for spec in self._outputs:
            got = list(outputs[spec.name].shape)
            fits = len(got) == len(spec.shape) and all(
                e in (-1, g) for g, e in zip(got, spec.shape, strict=True)
            )
            if not fits:
                raise ModelLoadError(
                    f"{self._path} output {spec.name!r} has shape {got}; the manifest says {spec.shape}"
                )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._library.run(inputs)
        if len(values) != len(self._outputs):
            raise RuntimeError(
                f"{self._path} returned {len(values)} outputs; the manifest lists {len(self._outputs)}"
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

    with IMPORT_LOCK:
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


def decode_weights(artifact: Artifact) -> list[np.ndarray]:
    """The artifact's coded weights, decoded in the order the library takes them (none: empty)."""
    coded = artifact.manifest.coded_weights
    if coded is None:
        return []
    path = artifact.path / coded.file
    if coded.codec not in weight_codec.CODECS:
        raise ArtifactError(
            "coded_weights",
            f"{path} uses codec {coded.codec!r}; this runtime decodes {', '.join(weight_codec.CODECS)} "
            "(an artifact from a newer edgecam: upgrade the camera's edgecam)",
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
