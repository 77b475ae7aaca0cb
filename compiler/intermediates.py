"""Which intermediate tensors verification compares when a model's outputs cannot show a wrong build.

A saturated classifier (a sigmoid of huge logits), or a random-weight network whose output is its last
bias plus 1e-9 of signal, gives the same outputs for every verification input: whatever the build
computes upstream, the outputs match ONNX Runtime's. What the inputs still move is inside: the
*frontier* tensors, the last ones that depend on the inputs before an op that stops that (saturates,
or adds a constant that drowns them). Every input-dependent computation is upstream of a frontier
tensor, so comparing those (built as extra outputs of the same model through the same pipeline)
checks what the outputs cannot.

Sensitivity is measured on ONNX Runtime: one run of the model with every float tensor exposed, kept
as running statistics per tensor (not all tensors of all samples), so it costs one reference pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# At most this many frontier tensors become extra outputs, the latest in graph order first: each is one
# more output the variant build writes. A saturating op per output path is the usual case: 1 or 2.
MAX_TENSORS = 8
_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32: a scale no output reaches


def relative_spread(samples: Sequence[np.ndarray]) -> float:
    """How much the inputs move a tensor: max over samples of |x_s - x_0|, over its largest |x|.
    0 for a tensor the inputs do not change (or a single sample, which cannot tell)."""
    first = np.asarray(samples[0], np.float64)
    scale = max(float(np.max(np.abs(first), initial=0.0)), _TINY)
    spread = 0.0
    for sample in samples[1:]:
        value = np.asarray(sample, np.float64)
        scale = max(scale, float(np.max(np.abs(value), initial=0.0)))
        spread = max(spread, float(np.max(np.abs(value - first), initial=0.0)))
    return spread / scale


def tensor_sensitivity(proto: Any, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """relative_spread of every float tensor a node computes, from ONNX Runtime on `feeds`."""
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    exposed = with_outputs(proto, _float_tensors(proto))
    names = [output.name for output in exposed.graph.output]
    session = ort.InferenceSession(
        exposed.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    first: dict[str, np.ndarray] = {}
    scale: dict[str, float] = {}
    spread: dict[str, float] = {}
    for feed in feeds:  # running statistics: one sample's tensors in memory, not all of them
        for name, value in zip(names, session.run(names, feed), strict=True):
            value = np.asarray(value, np.float64)
            magnitude = float(np.max(np.abs(value), initial=0.0))
            if name not in first:
                first[name], scale[name], spread[name] = value, magnitude, 0.0
                continue
            scale[name] = max(scale[name], magnitude)
            if value.shape == first[name].shape:
                spread[name] = max(spread[name], float(np.max(np.abs(value - first[name]), initial=0.0)))
    return {name: spread[name] / max(scale[name], _TINY) for name in names}


def frontier(proto: Any, sensitivity: dict[str, float], threshold: float) -> list[str]:
    """The tensors the inputs move (sensitivity > threshold) that feed an op whose outputs they do not:
    where the inputs' influence is lost. At most MAX_TENSORS, the latest in graph order."""
    found: list[str] = []
    for node in proto.graph.node:
        outputs = [name for name in node.output if name in sensitivity]
        if not outputs or any(sensitivity[name] > threshold for name in outputs):
            continue
        for name in node.input:
            if sensitivity.get(name, 0.0) > threshold and name not in found:
                found.append(name)
    order = {name: index for index, node in enumerate(proto.graph.node) for name in node.output}
    found.sort(key=lambda name: order.get(name, -1))
    return found[-MAX_TENSORS:]


def with_outputs(proto: Any, names: Sequence[str]) -> Any:
    """A copy of the model with the tensors `names` appended to its graph outputs (types inferred)."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {value.name: value.type for value in inferred.graph.value_info}
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {output.name for output in copy.graph.output}
    for name in names:
        if name in present:
            continue
        value = helper.ValueInfoProto(name=name)
        if name in types:
            value.type.CopyFrom(types[name])
        copy.graph.output.append(value)
    return copy


def _float_tensors(proto: Any) -> list[str]:
    """Outputs of the model's nodes that shape inference types as float32 (what verification compares;
    integer tensors of a QDQ model are compared through the float values they dequantize to)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    floats = {
        value.name
        for value in [*inferred.graph.value_info, *inferred.graph.output]
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    return [name for node in proto.graph.node for name in node.output if name in floats]
