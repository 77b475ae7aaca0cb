"""Which torch parameter trains each selected ONNX layer's weight (Conv/Gemm after onnx2torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgecam.compiler.passes.backends.onnx import WeightedLayer

if TYPE_CHECKING:
    from edgecam.compiler.training.convert import TorchModel


@dataclass
class TrainedLayer:
    """An ONNX layer and the torch module whose `weight` holds its weight in the same layout."""

    onnx: WeightedLayer
    module: Any  # a torch.nn.Module; Any because passes reach its prune/parametrize attributes

    @property
    def name(self) -> str:
        return self.onnx.name


def torch_layers(
    converted: TorchModel, layers: list[WeightedLayer], shapes: dict[str, tuple[int, ...]]
) -> tuple[list[TrainedLayer], dict[str, str]]:
    """The selected layers that have a torch module with a `weight` parameter of the ONNX weight's
    shape (onnx2torch keeps MatMul weights as constant buffers: those stay as they are), and why others
    are left alone."""
    import torch

    found: list[TrainedLayer] = []
    skipped: dict[str, str] = {}
    for layer in layers:
        module = converted.module_of(layer.name)
        weight = getattr(module, "weight", None)
        if module is None or not isinstance(weight, torch.nn.Parameter):
            skipped[layer.name] = "onnx2torch gives it no module with a trainable weight"
        elif tuple(weight.shape) != shapes[layer.weight]:
            skipped[layer.name] = (
                f"its torch weight has shape {tuple(weight.shape)}, not the ONNX {shapes[layer.weight]}"
            )
        else:
            found.append(TrainedLayer(layer, module))
    return found, skipped
