"""`kind: int8` — post-training static quantization with ONNX Runtime (`quantize_static`, QDQ format).

Weights become int8 initializers (per output channel by default) read through DequantizeLinear;
activations get QuantizeLinear → DequantizeLinear pairs whose scales come from running the model on
the recipe's calibration frames (min/max, entropy or percentile of each tensor). ONNX Runtime's CPU
provider fuses each DQ → Conv/Gemm/MatMul → Q into an int8 kernel; other runtimes see the same QDQ
graph and decide for themselves: TVM 0.27 imports such convs as float32, and the CPU targets fold
them back into integer conv2d/matmul before building (compiler/lowering/qdq_to_integer.py).

Activations default to uint8 and weights to int8 (U8S8): ONNX Runtime's fastest x86 combination.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes.backends.onnx import OnnxGraph, matches_any
from edgecam.compiler.passes.base import (
    CompressionPass,
    Feeds,
    PassConfig,
    PassContext,
    PassResult,
    register_pass,
)
from edgecam.compiler.passes.bias_correction import input_means, output_shift

# The op types ONNX Runtime 1.32's QDQ quantizer handles (its QDQRegistry and QLinearOpsRegistry);
# tests/compiler/passes/test_quantize.py fails if a newer ORT drops one.
QuantizableOp = Literal[
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose",
    "CumSum", "EmbedLayerNormalization", "Flatten", "Gather", "GatherElements", "Gemm",
    "GlobalAveragePool", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "MatMul", "MaxPool",
    "Mul", "Pad", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "TopK",
    "Transpose", "Unsqueeze", "Where",
]  # fmt: skip
# Weighted layers plus what sits between them in CNNs, so activations stay int8 from layer to layer
# instead of leaving int8 before every Add/pool (each exit is a dequantize + requantize).
DEFAULT_OPS: tuple[QuantizableOp, ...] = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Clip", "Relu", "Concat",
    "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
)  # fmt: skip
_Q_OPS = {"QuantizeLinear", "DequantizeLinear"}


class Int8Config(PassConfig):
    kind: Literal["int8"] = "int8"
    # One scale per output channel of each weight (accurate for convs whose filters differ in range,
    # e.g. after BN folding) instead of one per tensor (slightly faster on some CPUs).
    per_channel: bool = True
    # How each activation's range is chosen from the calibration outputs: min/max, the range that
    # minimizes KL divergence (entropy), or a percentile of |x| (clips rare outliers). Note: ORT 1.32's
    # quantize_static gives entropy 128 histogram bins for 128 quantized bins, so it only ever picks
    # the full range (min/max); seen on EfficientNet-Lite0, identical scales.
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=90.0, le=100.0)  # only for calibrate_method: percentile
    # uint8 activations (U8S8) suit x86 (ORT's fast path); int8 (S8S8) suits ARM kernels.
    activation_type: Literal["uint8", "int8"] = "uint8"
    # 7-bit weights: u8×s8 pair sums then fit int16, so x86 CPUs without VNNI may add them with
    # vpmaddubsw (edgecam: compiler/targets/x86_dots.py): whole models 1.4-1.9× faster than with full
    # int8 weights on a znver3. Grouped (depthwise) convs keep 8-bit weights: no dot step computes
    # them, so 7 bits would buy nothing, and they are the layers 7 bits costs most. EfficientNet-Lite0's
    # logit error: 8-bit 0.060, 7-bit 0.080, 7-bit with AdaRound 0.066 (bench/README.md).
    reduce_range: bool = False
    op_types: tuple[QuantizableOp, ...] = Field(default=DEFAULT_OPS, min_length=1)
    # fnmatch patterns on node names left in float (e.g. a sensitive first or last layer); a pattern
    # matching no node is refused so a typo does not silently quantize everything. Names are those
    # after pre-processing: mostly the original ones, fused nodes renamed (the error lists them).
    exclude: tuple[str, ...] = ()
    # Calibration inputs used (the first N of the recipe's `calibration`): entropy keeps histograms of
    # every tensor, so memory grows with N.
    max_calibration: int = Field(default=256, ge=1, le=100_000)
    # ORT's quant_pre_process (shape inference + graph optimization, e.g. BN folded into Conv) first,
    # so the ranges are calibrated on the graph that is actually quantized.
    preprocess: bool = True
    # Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and
    # Bias Correction", 2019): rounding the weights shifts each output channel's mean by ΔW·E[x];
    # subtracting that (E[x] measured on the calibration set) from the int32 bias removes the shift.
    bias_correction: bool = True
    # How the int8 weights are rounded: to nearest, or AdaRound (compiler/passes/adaround.py): per
    # Conv/Gemm, each weight rounded up or down to minimise the layer's output error on the calibration
    # inputs, layer by layer on the quantized model's own inputs; biases re-fitted. Scales unchanged.
    weight_rounding: Literal["nearest", "adaround"] = "nearest"
    adaround_iterations: int = Field(default=300, ge=1, le=100_000)  # Adam steps per layer
    # Output positions sampled per layer (im2col rows over all calibration inputs): time and memory.
    adaround_positions: int = Field(default=4096, ge=16, le=1_000_000)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over in-memory feeds (duck-typed: no ORT import)."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[Feeds] = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


@register_pass
class Int8Pass(CompressionPass[Int8Config]):
    config_type = Int8Config

    def apply(self, model: Any, context: PassContext) -> PassResult:
        import onnx

        feeds = list(context.require_calibration("int8")[: self.config.max_calibration])
        work = Path(context.work_dir) / f"int8-{_digest(model)}"
        work.mkdir(parents=True, exist_ok=True)
        source = work / "fp32.onnx"
        onnx.save(model, str(source))
        if self.config.preprocess:
            source = _preprocess(source, work / "preprocessed.onnx")
        prepared = onnx.load(str(source))
        excluded = _excluded_nodes(prepared, self.config.exclude)
        quantized = work / "int8.onnx"
        self._quantize(source, quantized, feeds, excluded, _grouped_conv_weights(prepared))
        result = onnx.load(str(quantized))
        _restore_metadata(result, model)
        _float_outputs(result)
        changes = self._changes(model, result, excluded, len(feeds))
        if self.config.bias_correction:
            changes["bias_correction"] = correct_biases(result, prepared, feeds)
        if self.config.weight_rounding == "adaround":
            changes["adaround"] = self._adaround(result, prepared, feeds, context.progress)
        return PassResult(model=result, changes=changes)

    def _quantize(
        self, source: Path, target: Path, feeds: list[Feeds], excluded: list[str], grouped: list[str]
    ) -> None:
        """`source` → `target` with ORT's quantize_static; `grouped`: the weights of grouped convs."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        config = self.config
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        activations = QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8
        extra: dict[str, Any] = {}
        if config.calibrate_method == "percentile":
            extra["CalibPercentile"] = config.percentile
        if config.reduce_range and grouped:
            full = {"reduce_range": False, **({"axis": 0} if config.per_channel else {})}
            extra["TensorQuantOverrides"] = {name: [dict(full)] for name in grouped}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress lines
                quantize_static(
                    str(source),
                    str(target),
                    _Reader(feeds),  # duck-typed CalibrationDataReader
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types),
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                    activation_type=activations,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=methods[config.calibrate_method],
                    extra_options=extra,
                )
        except Exception as exc:  # ORT raises assorted types (shape inference, calibration, op support)
            raise PassError(f"int8: ONNX Runtime could not quantize the model: {exc}") from exc

    def _adaround(
        self, result: Any, source: Any, feeds: list[Feeds], progress: Callable[[str], None]
    ) -> dict[str, Any]:
        from edgecam.compiler.passes.adaround import AdaRoundSettings, adaround

        config = self.config
        settings = AdaRoundSettings(
            iterations=config.adaround_iterations, positions=config.adaround_positions
        )
        started = time.perf_counter()
        report = adaround(result, source, feeds, settings, progress)
        report["seconds"] = round(time.perf_counter() - started, 1)
        return report

    def _changes(self, before: Any, after: Any, excluded: list[str], calibration: int) -> dict[str, Any]:
        config = self.config
        return {
            "calibration_inputs": calibration,
            "calibrate_method": config.calibrate_method,
            "per_channel": config.per_channel,
            "activation_type": config.activation_type,
            "quantized_nodes": quantized_nodes(after),
            "excluded_nodes": excluded,
            "int8_weights": int8_weights(after),
            "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in after.graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in after.graph.node),
            "initializer_bytes": {"before": _initializer_bytes(before), "after": _initializer_bytes(after)},
        }


def quantized_nodes(model: Any) -> dict[str, str]:
    """Compute nodes (name → op type) with at least one input read through DequantizeLinear."""
    dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return {
        node.name or node.output[0]: node.op_type
        for node in model.graph.node
        if node.op_type not in _Q_OPS and any(name in dequantized for name in node.input)
    }


def int8_weights(model: Any) -> list[str]:
    """Initializers stored as int8 that a DequantizeLinear reads as its data input (the weights)."""
    from onnx import TensorProto

    int8 = {init.name for init in model.graph.initializer if init.data_type == TensorProto.INT8}
    return [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8]


def correct_biases(qdq: Any, fp32: Any, feeds: Sequence[Feeds]) -> dict[str, Any]:
    """Edit `qdq`'s int32 biases in place: b -= ΔW·E[x] per output channel of each Conv/Gemm, where ΔW
    is its dequantized int8 weight minus the float weight of `fp32` (the graph that was quantized) and
    E[x] the mean of its (quantized) input over `feeds`, per input channel."""
    from onnx import numpy_helper

    graph = OnnxGraph(qdq)
    originals = {init.name: init for init in fp32.graph.initializer}
    layers, skipped = [], {}
    for node in qdq.graph.node:
        plan = _bias_plan(node, graph, originals)
        if isinstance(plan, str):
            if plan:
                skipped[node.name or node.output[0]] = plan
            continue
        layers.append(plan)
    means = input_means(qdq, [plan.node.input[0] for plan in layers], feeds)
    shifts = {}
    for plan in layers:
        shift = plan.shift(means[plan.node.input[0]])
        bias = graph.initializers[plan.bias_dq.input[0]]
        scale, zero = dq_params(graph, plan.bias_dq)
        values = (numpy_helper.to_array(bias).astype(np.float64) - zero) * scale - shift
        coded = np.clip(np.round(values / scale) + zero, -(2**31), 2**31 - 1).astype(np.int32)
        bias.CopyFrom(numpy_helper.from_array(coded, bias.name))
        shifts[plan.name] = round(float(np.abs(shift).max()), 6)
    return {"max_abs_shift": shifts, "skipped": skipped}


@dataclass
class _BiasPlan:
    node: Any  # the Conv/Gemm of the QDQ graph
    bias_dq: Any  # the DequantizeLinear reading its int32 bias
    delta: np.ndarray  # dequantized int8 weight - float weight, in the layer's own layout

    @property
    def name(self) -> str:
        return str(self.node.name or self.node.output[0])

    def shift(self, mean: np.ndarray) -> np.ndarray:
        return output_shift(self.node, self.delta, mean)


def _bias_plan(node: Any, graph: OnnxGraph, originals: dict[str, Any]) -> _BiasPlan | str:
    """What correcting this node needs, or why it cannot be corrected ("" for nodes that are no layer)."""
    from onnx import numpy_helper

    if node.op_type not in ("Conv", "Gemm"):
        return ""
    weight_dq = producer(graph, node.input[1], "DequantizeLinear")
    bias_dq = producer(graph, node.input[2], "DequantizeLinear") if len(node.input) > 2 else None
    if weight_dq is None or bias_dq is None:
        return "no quantized weight and bias"
    if weight_dq.input[0] not in graph.initializers or bias_dq.input[0] not in graph.initializers:
        return "weight or bias is not a constant"
    if node.op_type == "Gemm" and (
        OnnxGraph.attribute(node, "transA", 0) or OnnxGraph.attribute(node, "alpha", 1.0) != 1.0
    ):
        return "Gemm with transA or alpha != 1"
    original = originals.get(weight_dq.input[0].removesuffix("_quantized"))
    if original is None:
        return f"float weight of {weight_dq.input[0]!r} not found"
    scale, zero = dq_params(graph, weight_dq)
    quantized = numpy_helper.to_array(graph.initializers[weight_dq.input[0]]).astype(np.float64)
    delta = (quantized - zero) * scale - numpy_helper.to_array(original).astype(np.float64)
    return _BiasPlan(node, bias_dq, delta)


def dq_params(graph: OnnxGraph, dq: Any) -> tuple[np.ndarray, np.ndarray]:
    """A DequantizeLinear's scale and zero point, shaped to broadcast over its input (per-axis aware)."""
    rank = len(graph.initializers[dq.input[0]].dims)
    scale = graph.weight(dq.input[1]).astype(np.float64)
    zero = graph.weight(dq.input[2]).astype(np.float64) if len(dq.input) > 2 else np.zeros_like(scale)
    if scale.ndim == 1 and rank > 1:
        shape = [1] * rank
        shape[OnnxGraph.attribute(dq, "axis", 1) % rank] = -1  # DequantizeLinear's axis defaults to 1
        return scale.reshape(shape), zero.reshape(shape)
    return scale, zero


def producer(graph: OnnxGraph, tensor: str, op_type: str | None = None) -> Any:
    """The node writing `tensor` (None if it is an input/initializer or not of `op_type`)."""
    node = graph.producer.get(tensor)
    return node if node is not None and op_type in (None, node.op_type) else None


def _preprocess(source: Path, target: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target))
    except Exception as exc:  # symbolic shape inference rejects some graphs; say which step failed
        raise PassError(
            f"int8: ONNX Runtime's quant_pre_process failed ({exc}); set `preprocess: false` to quantize "
            "the graph as it is"
        ) from exc
    return target


def _grouped_conv_weights(model: Any) -> list[str]:
    """The constant weights of `model`'s Conv nodes with groups > 1 (depthwise convs among them)."""
    constants = {init.name for init in model.graph.initializer}
    return [
        node.input[1]
        for node in model.graph.node
        if node.op_type == "Conv" and OnnxGraph.attribute(node, "group", 1) > 1 and node.input[1] in constants
    ]


def _excluded_nodes(model: Any, patterns: tuple[str, ...]) -> list[str]:
    names = [node.name for node in model.graph.node if node.name]
    for pattern in patterns:
        if not any(matches_any(name, [pattern]) for name in names):
            raise PassError(
                f"int8: `exclude` pattern {pattern!r} matches no node; nodes: {', '.join(names) or '(none)'}"
            )
    return [name for name in names if matches_any(name, patterns)]


def _float_outputs(model: Any) -> None:
    """Drop the Q→DQ pair ORT puts on a graph output (the logits): rounding the model's result to 8
    bits adds error right where classes are ranked and saves nothing (the output is read as float)."""
    graph = OnnxGraph(model)
    dropped: set[tuple[str, str]] = set()  # (op type, first output) of the Q and DQ nodes removed
    for output in model.graph.output:
        chain = _qdq_chain(graph, output.name)
        if chain is None:
            continue
        source, q, dq = chain
        source.output[list(source.output).index(q.input[0])] = output.name
        dropped |= {(q.op_type, q.output[0]), (dq.op_type, dq.output[0])}
    if dropped:
        keep = [node for node in model.graph.node if (node.op_type, node.output[0]) not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        OnnxGraph(model).remove_unused_initializers()


def _qdq_chain(graph: OnnxGraph, output: str) -> tuple[Any, Any, Any] | None:
    """(producer, Q, DQ) when `output` is written by producer → QuantizeLinear → DequantizeLinear and
    nothing else reads the two intermediate tensors; else None (the graph stays as ORT made it)."""
    dq = producer(graph, output, "DequantizeLinear")
    if dq is None:
        return None
    q = producer(graph, dq.input[0], "QuantizeLinear")
    if q is None:
        return None
    source = producer(graph, q.input[0])
    if source is None or len(graph.consumers[q.input[0]]) != 1 or len(graph.consumers[dq.input[0]]) != 1:
        return None
    return source, q, dq


def _restore_metadata(result: Any, original: Any) -> None:
    """The edgecam.* metadata (preprocessing, labels) must survive: the artifact is built from it."""
    del result.metadata_props[:]
    for prop in original.metadata_props:
        result.metadata_props.add(key=prop.key, value=prop.value)


def _initializer_bytes(model: Any) -> int:
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(init).nbytes for init in model.graph.initializer))


def _digest(model: Any) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()[:12]
