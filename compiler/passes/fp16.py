"""`kind: fp16` — float32 weights and activations become float16 (onnxconverter-common's converter).

Half the weight bytes, and half the memory traffic on hardware with fp16 arithmetic (GPUs, ARMv8.2+).
Inputs and outputs stay float32 (`keep_io_types`): Cast nodes at the edges keep the server's tensor
contract unchanged. Ops that lose too much in fp16 (or have no fp16 kernel) can stay float32.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes.backends.onnx import matches_any
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass

OpType = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$")]
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16, without importing onnx at module level


class Fp16Config(PassConfig):
    kind: Literal["fp16"] = "fp16"
    # Op types computed in float32 besides the converter's own list (ops with no fp16 kernel such as
    # Resize, TopK, NonMaxSuppression); e.g. Softmax or ReduceMean when their range needs float32.
    keep_ops: tuple[OpType, ...] = ()
    # fnmatch patterns on node names computed in float32 (a sensitive layer); must match a node.
    exclude: tuple[str, ...] = ()
    # Weights are clamped into float16's range: |w| above this becomes ±this, nonzero |w| below
    # `min_positive` becomes ±min_positive (instead of overflowing to inf or flushing to 0).
    max_finite: float = Field(default=1e4, ge=1.0, le=65504.0)
    min_positive: float = Field(default=1e-7, gt=0.0, le=1e-3)


@register_pass
class Fp16Pass(CompressionPass[Fp16Config]):
    config_type = Fp16Config

    def apply(self, model: Any, context: PassContext) -> PassResult:
        import onnx
        from onnxconverter_common import float16  # type: ignore[import-untyped]

        config = self.config
        _check_present(model, config)
        excluded = [n.name for n in model.graph.node if n.name and matches_any(n.name, config.exclude)]
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the converter edits the model it is given
        try:
            converted = float16.convert_float_to_float16(
                copy,
                min_positive_val=config.min_positive,
                max_finite_val=config.max_finite,
                keep_io_types=True,
                op_block_list=sorted({*float16.DEFAULT_OP_BLOCK_LIST, *config.keep_ops}),
                node_block_list=excluded,
            )
        except Exception as exc:  # shape inference or an unsupported construct inside the converter
            raise PassError(f"fp16: onnxconverter-common could not convert the model: {exc}") from exc
        _float32_outputs(converted, model)
        return PassResult(model=converted, changes=_changes(model, converted, config, excluded))


def _check_present(model: Any, config: Fp16Config) -> None:
    """Refuse op types and name patterns that select nothing: a typo would silently keep nothing."""
    ops = sorted({node.op_type for node in model.graph.node})
    for op in config.keep_ops:
        if op not in ops:
            raise PassError(f"fp16: `keep_ops` entry {op!r} is not an op type of this model; it has {ops}")
    names = [node.name for node in model.graph.node if node.name]
    for pattern in config.exclude:
        if not any(matches_any(name, [pattern]) for name in names):
            raise PassError(f"fp16: `exclude` pattern {pattern!r} matches no node; nodes: {', '.join(names)}")


def _float32_outputs(converted: Any, original: Any) -> None:
    """Make float32 outputs float32 again where the converter broke `keep_io_types`: when the node
    writing an output is kept in float32 it still appends a Cast to float16 and retypes the output."""
    was_float = {o.name for o in original.graph.output if o.type.tensor_type.elem_type == _FLOAT}
    producers = {out: node for node in converted.graph.node for out in node.output}
    for output in converted.graph.output:
        if output.name not in was_float or output.type.tensor_type.elem_type == _FLOAT:
            continue
        producer = producers[output.name]
        if producer.op_type != "Cast":  # not the known converter slip: never hand out a float16 output
            raise PassError(
                f"fp16: output {output.name!r} became float16 ({producer.op_type} {producer.name!r}); "
                "keep that node in float32 with `exclude`"
            )
        # The Cast's input is the kept node's float32 result: a Cast to float32 passes it on exactly.
        for attr in producer.attribute:
            if attr.name == "to":
                attr.i = _FLOAT
        output.type.tensor_type.elem_type = _FLOAT
        for info in converted.graph.value_info:
            if info.name == output.name:
                info.type.tensor_type.elem_type = _FLOAT


def _clamped(values: np.ndarray, config: Fp16Config) -> int:
    """How many values the converter moves into float16's range (beyond ordinary rounding)."""
    magnitude = np.abs(values.astype(np.float64))
    outside = (magnitude > config.max_finite) | ((magnitude > 0) & (magnitude < config.min_positive))
    return int(np.count_nonzero(outside))


def _changes(before: Any, after: Any, config: Fp16Config, excluded: list[str]) -> dict[str, Any]:
    from onnx import numpy_helper

    old = {init.name: numpy_helper.to_array(init) for init in before.graph.initializer}
    halved = [
        init.name for init in after.graph.initializer if init.data_type == _FLOAT16 and init.name in old
    ]
    clamped = sum(_clamped(old[name], config) for name in halved)
    return {
        "float16_initializers": halved,
        "float32_initializers": [i.name for i in after.graph.initializer if i.data_type == _FLOAT],
        "clamped_values": clamped,
        "kept_float32_nodes": excluded,
        "kept_ops": list(config.keep_ops),
        "casts_added": sum(n.op_type == "Cast" for n in after.graph.node)
        - sum(n.op_type == "Cast" for n in before.graph.node),
        "initializer_bytes": {
            "before": int(sum(a.nbytes for a in old.values())),
            "after": int(sum(numpy_helper.to_array(i).nbytes for i in after.graph.initializer)),
        },
    }
