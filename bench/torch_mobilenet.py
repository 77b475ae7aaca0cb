"""PyTorch's side of the CUDA benchmark: `shapes.mobilenet_v2` written as a torch module the way a
PyTorch user would (torchvision's layout: stem, inverted residual blocks, 1×1 head conv, linear
classifier), with the weights of the ONNX model loaded into it, so both engines run the same network.

BatchNorm is already folded into the convolutions' biases in the ONNX model, so every conv here has a
bias and no BatchNorm follows it. The ONNX Conv nodes are in the order shapes.py created them, which is
the order `MobileNetV2.convs` lists its convolutions; loading checks every shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from shapes import MOBILENET_V2_BLOCKS
from torch import nn


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=True)


class InvertedResidual(nn.Module):
    """1×1 expansion (none when t = 1) → 3×3 depthwise → 1×1 linear projection, + input if shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = _conv(c_in, hidden, 1) if expansion != 1 else None
        self.depthwise = _conv(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = _conv(hidden, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def convs(self) -> list[nn.Conv2d]:
        return [c for c in (self.expand, self.depthwise, self.project) if c is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(nn.functional.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = _conv(3, 32, 3, stride=2)
        blocks, c_in = [], 32
        for t, c, n, s in MOBILENET_V2_BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv(c_in, 1280, 1)
        self.classifier = nn.Linear(1280, classes)

    def convs(self) -> list[nn.Conv2d]:
        """Every convolution in the order shapes.mobilenet_v2 creates them."""
        inner = [conv for block in self.blocks for conv in block.convs()]  # type: ignore[union-attr]
        return [self.stem, *inner, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem(x))
        x = nn.functional.relu6(self.head(self.blocks(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def from_onnx(model: Any) -> MobileNetV2:
    """A MobileNetV2 holding the weights of `model` (an onnx.ModelProto made by shapes.mobilenet_v2)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    conv_nodes = [node for node in model.graph.node if node.op_type == "Conv"]
    (gemm,) = [node for node in model.graph.node if node.op_type == "Gemm"]
    net = MobileNetV2(classes=values[gemm.input[1]].shape[0])
    convs = net.convs()
    if len(convs) != len(conv_nodes):
        raise ValueError(f"the ONNX model has {len(conv_nodes)} convolutions; MobileNetV2 has {len(convs)}")
    with torch.no_grad():
        for conv, node in zip(convs, conv_nodes, strict=True):
            _copy(conv.weight, values[node.input[1]], node.name)
            _copy(conv.bias, values[node.input[2]], node.name)
        _copy(net.classifier.weight, values[gemm.input[1]], gemm.name)  # Gemm transB=1: [classes, features]
        _copy(net.classifier.bias, values[gemm.input[2]], gemm.name)
    return net.eval()


def _copy(parameter: torch.Tensor, value: np.ndarray, node: str) -> None:
    if tuple(parameter.shape) != value.shape:
        raise ValueError(f"{node}: ONNX weight {value.shape} does not fit {tuple(parameter.shape)}")
    parameter.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))  # a writable copy
