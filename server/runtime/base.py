"""The Runtime contract and the LoadedModel the rest of the server works with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgecam.compiler.artifact import Manifest
from edgecam.model import Described, ModelDescription


class Runtime(Protocol):
    """Executes one model. `run` must be safe to call from several threads at once."""

    name: str  # "tvm" or "onnxruntime"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory_bytes(self) -> int:
        """Bytes this model holds: weights, compiled code and workspace, as far as known."""
        ...


@dataclass
class LoadedModel(Described):
    """A model being served: its runtime and its description (an artifact's manifest, or what
    edgecam/model.py reads from a plain .onnx file)."""

    name: str  # the name it is served under (the description's, unless the operator chose another)
    version: str
    platform: str  # KServe ModelMetadata.platform, e.g. "tvm_x86_64", "onnxruntime_onnx"
    runtime: Runtime
    description: ModelDescription
    manifest: Manifest | None = None
    path: Path | None = None  # the artifact directory or .onnx file it was loaded from
    workspace_bytes: int = 0  # measured at load: process growth beyond the weights (see load_model)
