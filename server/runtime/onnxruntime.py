"""Runtime for plain .onnx files and onnxruntime artifacts: the reference the TVM output is checked against.

Only onnxruntime is used, never the `onnx` package: a camera does not install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecam.model import MetadataError, ModelDescription, TensorSpec, describe
from edgecam.ort_options import session_options
from edgecam.server.errors import ModelLoadError

# ONNX type strings as onnxruntime reports them → KServe datatypes.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class OnnxRuntime:
    """An onnxruntime InferenceSession on the CPU. `session.run` is thread-safe, so no lock is needed."""

    name = "onnxruntime"

    def __init__(self, path: Path, intra_op_threads: int = 0) -> None:
        """`intra_op_threads`: 0 lets onnxruntime use every core; several cameras may want 1 each."""
        import onnxruntime as ort  # lazy: the server imports this module on every start

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"ONNX model {self.path} does not exist")
        options = session_options(intra_op_threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelLoadError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        self.inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, values, strict=True))

    def memory_bytes(self) -> int:
        # The initializers dominate an ONNX file, and counting them exactly needs the `onnx`
        # package, which a camera lacks; the file size (plus external data) is close enough.
        data = [p for p in self.path.parent.glob(f"{self.path.name}.data") if p.is_file()]
        return self.path.stat().st_size + sum(p.stat().st_size for p in data)

    def metadata(self) -> dict[str, str]:
        """The model's metadata_props (the `edgecam.*` keys carry pre/postprocessing and labels)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}; supported: {sorted(_ORT_TYPES)}")
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def describe_onnx(runtime: OnnxRuntime) -> ModelDescription:
    """The model's description from its metadata_props (edgecam/model.py), inferred where absent."""
    try:
        return describe(
            runtime.metadata(),
            runtime.inputs,
            runtime.outputs,
            runtime.path.stem,
            f"{runtime.path} metadata_props",
        )
    except MetadataError as exc:
        raise ModelLoadError(str(exc)) from None
