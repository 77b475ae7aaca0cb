"""Runtime for plain .onnx files and onnxruntime artifacts: the reference the TVM output is checked against.

Only onnxruntime is used, never the `onnx` package: a camera does not install it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecam.compiler.artifact import TensorSpec
from edgecam.ort_options import session_options
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing
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
METADATA_PREFIX = "edgecam."


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


def describe_onnx(runtime: OnnxRuntime) -> tuple[str | None, Preprocessing, Postprocessing, list[str]]:
    """Model name, pre/postprocessing and labels from metadata_props, inferred where absent."""
    meta = runtime.metadata()
    where = f"{runtime.path} metadata_props"
    name = meta.get(METADATA_PREFIX + "model_name")
    try:
        pre_json = meta.get(METADATA_PREFIX + "preprocessing")
        pre = Preprocessing.model_validate_json(pre_json) if pre_json else infer_preprocessing(runtime.inputs)
        post_json = meta.get(METADATA_PREFIX + "postprocessing")
        post = Postprocessing.model_validate_json(post_json) if post_json else Postprocessing()
        labels = json.loads(meta.get(METADATA_PREFIX + "labels", "[]"))
    except ValueError as exc:  # pydantic ValidationError and JSONDecodeError are ValueErrors
        raise ModelLoadError(f"{where}: invalid edgecam metadata: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelLoadError(f"{where}: 'edgecam.labels' must be a JSON list of strings, got {labels!r}")
    return name, pre, post, labels


def infer_preprocessing(inputs: list[TensorSpec]) -> Preprocessing:
    """Guess the recipe of a model without edgecam metadata from its one image input's shape."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            f"cannot infer preprocessing: expected one image input of rank 4, got "
            f"{[(s.name, s.shape) for s in inputs]}; add edgecam.preprocessing to the model's metadata_props"
        )
    _, a, b, c = inputs[0].shape
    if a in (1, 3) and b > 0 and c > 0:
        return Preprocessing(height=b, width=c, color="GRAY" if a == 1 else "RGB", layout="NCHW")
    if c in (1, 3) and a > 0 and b > 0:
        return Preprocessing(height=a, width=b, color="GRAY" if c == 1 else "RGB", layout="NHWC")
    raise ModelLoadError(
        f"cannot infer preprocessing from input {inputs[0].name!r} shape {inputs[0].shape}: expected "
        "[1,C,H,W] or [1,H,W,C] with C 1 or 3 and fixed H, W; add edgecam.preprocessing to metadata_props"
    )
