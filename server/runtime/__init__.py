"""Load a model for serving: an artifact directory (verified first) or a plain .onnx file.

Nothing heavy is imported here; tvm and onnxruntime are imported by the runtime that needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecam.compiler.artifact import Artifact, ArtifactError, load_artifact
from edgecam.model import TensorSpec
from edgecam.server.errors import ModelLoadError
from edgecam.server.runtime.base import LoadedModel, Runtime

__all__ = ["ArtifactError", "LoadedModel", "ModelLoadError", "Runtime", "load_model"]


def load_model(
    path: Path, name: str | None = None, version: str = "1", intra_op_threads: int = 0
) -> LoadedModel:
    """Load `path` and describe it for the server.

    Raises ArtifactError (naming the failed check) for a bad artifact, ModelLoadError otherwise.
    `intra_op_threads` applies to onnxruntime models (0: onnxruntime's default, every core).
    """
    path = Path(path)
    if path.is_dir():
        artifact = load_artifact(path)
        rss_before = _baseline(artifact.manifest.runtime)
        model = _from_artifact(artifact, name, version, intra_op_threads)
    elif not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    elif path.suffix.lower() == ".onnx":
        rss_before = _baseline("onnxruntime")
        model = _from_onnx(path, name, version, intra_op_threads)
    else:
        raise ModelLoadError(
            f"{path} is neither an artifact directory (with manifest.json) nor an .onnx file"
        )
    model.path = path
    _warm_up(model)
    # What loading and one run added to the process beyond the weights: the model's workspace.
    # An estimate (other threads allocate too), measured once, at load.
    model.workspace_bytes = max(0, _rss() - rss_before - model.runtime.memory_bytes())
    return model


def _baseline(runtime: str) -> int:
    """RSS after the runtime library itself is loaded, so its own size is not charged to the model."""
    if runtime == "tvm":
        from edgecam.library import import_tvm_runtime

        import_tvm_runtime()
    else:
        import onnxruntime  # noqa: F401

    return _rss()


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _warm_up(model: LoadedModel) -> None:
    """One run on zeros: allocates the workspace now, not on the first camera frame, and proves it runs."""
    from edgecam.datatypes import to_numpy
    from edgecam.model import produced_shape

    # An open dimension (a plain .onnx file's batch or image size) gets what a camera will feed:
    # the preprocessed frame's size for the image input, 1 elsewhere.
    frame = produced_shape(model.preprocessing)
    feeds = {}
    for index, spec in enumerate(model.inputs):
        sizes = frame if index == 0 and len(spec.shape) == len(frame) else [1] * len(spec.shape)
        shape = [size if d < 0 else d for d, size in zip(spec.shape, sizes, strict=True)]
        feeds[spec.name] = np.zeros(shape, to_numpy(spec.datatype))
    try:
        model.runtime.run(feeds)
    except Exception as exc:  # a model that cannot run at all must not be served
        raise ModelLoadError(f"model {model.name!r} failed its first run on zero inputs: {exc}") from exc


def _from_artifact(artifact: Artifact, name: str | None, version: str, threads: int) -> LoadedModel:
    manifest = artifact.manifest
    runtime: Runtime
    if manifest.runtime == "tvm":
        from edgecam.server.runtime.tvm import TvmRuntime

        runtime = TvmRuntime(artifact)
        platform = f"tvm_{manifest.target.name}"
    else:
        from edgecam.server.runtime.onnxruntime import OnnxRuntime

        ort_runtime = OnnxRuntime(artifact.library_path, threads)
        _check_specs(artifact.library_path, "input", ort_runtime.inputs, manifest.inputs)
        _check_specs(artifact.library_path, "output", ort_runtime.outputs, manifest.outputs)
        runtime = ort_runtime
        platform = "onnxruntime_onnx"
    return LoadedModel(
        name=name or manifest.model_name,
        version=version,
        platform=platform,
        runtime=runtime,
        description=manifest,
        manifest=manifest,
    )


def _from_onnx(path: Path, name: str | None, version: str, threads: int) -> LoadedModel:
    from edgecam.server.runtime.onnxruntime import OnnxRuntime, describe_onnx

    runtime = OnnxRuntime(path, threads)
    description = describe_onnx(runtime)
    return LoadedModel(
        name=name or description.model_name,
        version=version,
        platform="onnxruntime_onnx",
        runtime=runtime,
        description=description,
    )


def _check_specs(file: Path, kind: str, actual: list[TensorSpec], expected: list[TensorSpec]) -> None:
    """The model file must have the manifest's tensors: same names, datatypes and fixed dimensions."""
    got = [(s.name, s.datatype, len(s.shape)) for s in actual]
    want = [(s.name, s.datatype, len(s.shape)) for s in expected]
    dims_ok = all(
        a in (-1, e) or e == -1
        for sa, se in zip(actual, expected, strict=False)
        for a, e in zip(sa.shape, se.shape, strict=False)
    )
    if got != want or not dims_ok:
        raise ArtifactError(
            kind + "s",
            f"{file} has {kind}s {[(s.name, s.datatype, s.shape) for s in actual]}; the manifest says "
            f"{[(s.name, s.datatype, s.shape) for s in expected]}",
        )
