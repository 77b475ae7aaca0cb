"""The Runtime contract and the LoadedModel the rest of the server works with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgecam.compiler.artifact import Manifest, TensorSpec
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing


class Runtime(Protocol):
    """Executes one model. `run` must be safe to call from several threads at once."""

    name: str  # "tvm" or "onnxruntime"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory_bytes(self) -> int:
        """Bytes this model holds: weights, compiled code and workspace, as far as known."""
        ...


@dataclass
class LoadedModel:
    name: str
    version: str
    platform: str  # KServe ModelMetadata.platform, e.g. "tvm_x86_64", "onnxruntime_onnx"
    runtime: Runtime
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    labels: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    path: Path | None = None  # the artifact directory or .onnx file it was loaded from
    workspace_bytes: int = 0  # measured at load: process growth beyond the weights (see load_model)
