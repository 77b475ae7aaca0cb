"""Quantization-aware training on a converted model: torch.ao fake quantization in, QDQ ONNX out.

`attach` puts torch.ao `FakeQuantize` modules where the int8 build computes in integers: on the
weight of every Conv/Gemm (per output channel, symmetric, 7 or 8 bits; through a parametrization so
the optimizer still updates the float weight) and on every tensor such a layer reads (per tensor,
uint8, moving-average min/max). Their forward rounds to the quantization grid and their backward is
the straight-through estimator (the gradient passes unchanged inside the clamping range), so training
adapts the float weights to the rounding the camera will do.

`export` writes what was trained as the QDQ ONNX the int8 lowering (compiler/lowering/qdq_to_integer.py)
computes in integers: the float model is exported with its weights on the grid (the training seam's
export, checked against torch), then each layer's weight becomes an int8 initializer behind a
DequantizeLinear with the trained per-channel scales, and each input it reads a QuantizeLinear /
DequantizeLinear pair with the trained activation scale and zero point: the same form ONNX Runtime's
static quantization writes (the `int8` pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam.compiler.errors import TrainingError

if TYPE_CHECKING:
    import onnx
    import torch

    from edgecam.compiler.training.convert import TorchModel

WEIGHT_RANGE = {7: (-64, 63), 8: (-128, 127)}  # int8 weight values; 7 bits: AVX2's vpmaddubsw fits them
_UINT8, _INT8 = 2, 3  # onnx.TensorProto.UINT8 / INT8


@dataclass
class Quantized:
    """A converted model with fake quantization attached: layer (ONNX node name) → its weight's
    FakeQuantize, and ONNX node name → the FakeQuantize of the activation it reads."""

    converted: TorchModel
    weights: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)


def attach(converted: TorchModel, weight_bits: int, skip: set[str]) -> Quantized:
    """Fake-quantize every Conv2d/Linear of `converted` whose ONNX node is not in `skip`."""
    import torch
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, PerChannelMinMaxObserver
    from torch.nn.utils import parametrize

    module = converted.module
    if not isinstance(module, torch.fx.GraphModule):  # onnx2torch builds one; the graph is edited below
        raise TrainingError(f"qat: the converted model is a {type(module).__name__}, not a torch.fx graph")
    low, high = WEIGHT_RANGE[weight_bits]
    result = Quantized(converted)
    shared: dict[Any, Any] = {}  # one activation FakeQuantize per tensor, however many layers read it
    for node in list(module.graph.nodes):
        layer = module.get_submodule(node.target) if node.op == "call_module" else None
        onnx_name = converted.node_of_module.get(str(node.target), "")
        if not isinstance(layer, torch.nn.Conv2d | torch.nn.Linear) or onnx_name in skip:
            continue
        weight_fq = FakeQuantize(
            observer=PerChannelMinMaxObserver,
            quant_min=low,
            quant_max=high,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )
        parametrize.register_parametrization(layer, "weight", _parametrization(weight_fq))
        result.weights[onnx_name] = weight_fq
        source = node.args[0]
        if source not in shared:
            name = f"edgecam_qat_input_{len(shared)}"
            module.add_submodule(
                name,
                FakeQuantize(
                    observer=MovingAverageMinMaxObserver,
                    quant_min=0,
                    quant_max=255,
                    dtype=torch.quint8,
                    qscheme=torch.per_tensor_affine,
                ),
            )
            with module.graph.inserting_after(source):
                shared[source] = module.graph.call_module(name, (source,))
        node.args = (shared[source], *node.args[1:])
        result.inputs[onnx_name] = module.get_submodule(shared[source].target)
    module.recompile()
    if not result.weights:
        raise TrainingError("qat: the model has no Conv or Gemm layer to quantize (or `exclude` names all)")
    return result


def _parametrization(fake_quant: Any) -> torch.nn.Module:
    """The weight as the layer sees it: the float weight fake-quantized (torch imports lazily, so the
    module class is made here)."""
    import torch

    class FakeQuantized(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fake_quant = fake_quant

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return self.fake_quant(weight)

    return FakeQuantized()


def observe(quantized: Quantized, inputs: torch.Tensor, batch: int = 128) -> None:
    """Start the activation ranges from real inputs before training (moving averages from here on)."""
    import torch

    module = quantized.converted.module.eval()
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            module(inputs[start : start + batch])


def export(quantized: Quantized, check_inputs: np.ndarray) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The trained model as QDQ ONNX (see the module docstring) and per-layer numbers."""
    from torch.nn.utils import parametrize

    from edgecam.compiler.training.convert import to_onnx

    module = quantized.converted.module
    for fake_quant in [*quantized.weights.values(), *quantized.inputs.values()]:
        fake_quant.disable_observer()  # the trained ranges are final
    qparams: dict[str, tuple[np.ndarray, float, int]] = {}
    for name, fake_quant in quantized.weights.items():
        activation = quantized.inputs[name]
        scale, zero_point = activation.calculate_qparams()
        qparams[name] = (
            fake_quant.scale.detach().numpy().astype(np.float32),
            float(scale.reshape(-1)[0]),
            int(zero_point.reshape(-1)[0]),
        )
    for layer in module.modules():
        if parametrize.is_parametrized(layer, "weight"):
            # The float weight becomes its fake-quantized value: exactly on the grid the export codes.
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    for fake_quant in quantized.inputs.values():
        fake_quant.disable_fake_quant()  # the float export; the QDQ pairs are added to the graph below
    exported = to_onnx(quantized.converted, check_inputs)
    layers = _insert_qdq(exported, qparams)
    return exported, layers


def _insert_qdq(model: onnx.ModelProto, qparams: dict[str, tuple[np.ndarray, float, int]]) -> dict[str, Any]:
    """Each named Conv/Gemm reads its weight as DequantizeLinear(int8) and its input through a
    QuantizeLinear/DequantizeLinear pair (one pair per tensor); returns per-layer numbers."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    pairs: dict[str, str] = {}
    added: list[Any] = []
    layers: dict[str, Any] = {}
    for name, (weight_scale, scale, zero_point) in qparams.items():
        node = nodes.get(name)
        if node is None or node.op_type not in ("Conv", "Gemm") or node.input[1] not in initializers:
            raise TrainingError(f"qat: the export has no Conv/Gemm node {name!r} with a constant weight")
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            raise TrainingError(
                f"qat: Gemm {name!r} was exported without transB; its channels are not axis 0"
            )
        weight_name = node.input[1]
        weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float64)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        codes = np.round(weight / weight_scale.astype(np.float64).reshape(shape))
        if np.abs(codes).max(initial=0) > 128:
            raise TrainingError(f"qat: {name!r}'s exported weight is off its quantization grid")
        graph.initializer.remove(initializers[weight_name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes.astype(np.int8), f"{weight_name}_quantized"),
                numpy_helper.from_array(weight_scale, f"{weight_name}_scale"),
                numpy_helper.from_array(np.zeros(len(weight_scale), np.int8), f"{weight_name}_zero_point"),
            ]
        )
        dequantized = f"{weight_name}_DequantizeLinear_Output"
        added.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{weight_name}_quantized", f"{weight_name}_scale", f"{weight_name}_zero_point"],
                [dequantized],
                name=f"{weight_name}_DequantizeLinear",
                axis=0,
            )
        )
        node.input[1] = dequantized
        tensor = node.input[0]
        if tensor not in pairs:
            pairs[tensor] = _activation_pair(graph, added, tensor, scale, zero_point)
        node.input[0] = pairs[tensor]
        layers[name] = {
            "weight_scales": len(weight_scale),
            "input_scale": scale,
            "input_zero_point": zero_point,
        }
    graph.node.extend(added)
    _sort_topologically(graph)
    return layers


def _activation_pair(graph: Any, added: list[Any], tensor: str, scale: float, zero_point: int) -> str:
    from onnx import helper, numpy_helper

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_scale"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), f"{tensor}_zero_point"),
        ]
    )
    quantized, dequantized = f"{tensor}_QuantizeLinear_Output", f"{tensor}_DequantizeLinear_Output"
    qparams = [f"{tensor}_scale", f"{tensor}_zero_point"]
    added.append(
        helper.make_node("QuantizeLinear", [tensor, *qparams], [quantized], name=f"{tensor}_Quantize")
    )
    added.append(
        helper.make_node(
            "DequantizeLinear", [quantized, *qparams], [dequantized], name=f"{tensor}_Dequantize"
        )
    )
    return dequantized


def _sort_topologically(graph: Any) -> None:
    """Nodes in an order where every input is produced before it is read (ONNX requires it)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise TrainingError("qat: the QDQ graph has a cycle or an input nothing produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        done = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in done]
    del graph.node[:]
    graph.node.extend(ordered)
