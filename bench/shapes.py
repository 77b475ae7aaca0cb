"""MobileNetV2 and ResNet-18 built in code with seeded random weights (no download): the standard
shapes a camera runs, for benchmarks that need real-size networks, not trained ones.

BatchNorm is folded into each conv's bias, as an export for inference does; MobileNetV2 uses ReLU6
(Clip 0..6) and linear bottlenecks with residual adds, ResNet-18 basic blocks with 1×1 projections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: str = ""
    ) -> str:
        from onnx import helper, numpy_helper

        name = self._name("conv")
        fan_in = c_in // groups * k * k
        weight = self.rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / fan_in)
        bias = self.rng.standard_normal(c_out) * 0.01
        self.inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
            numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
        ]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name,
                kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups,
            )
        )  # fmt: skip
        return self.activation(name, act) if act else name

    def activation(self, x: str, act: str) -> str:
        from onnx import helper, numpy_helper

        out = self._name(act)
        if act == "relu6":
            if not any(init.name == "six" for init in self.inits):
                self.inits += [
                    numpy_helper.from_array(np.float32(0), "zero"),
                    numpy_helper.from_array(np.float32(6), "six"),
                ]
            self.nodes.append(helper.make_node("Clip", [x, "zero", "six"], [out], name=out))
        elif act == "silu":  # as PyTorch exports nn.SiLU at opset 17: x * sigmoid(x)
            self.nodes += [
                helper.make_node("Sigmoid", [x], [f"{out}_gate"], name=f"{out}_gate"),
                helper.make_node("Mul", [x, f"{out}_gate"], [out], name=out),
            ]
        elif act in ("sigmoid", "hardswish", "hardsigmoid"):
            op = {"sigmoid": "Sigmoid", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid"}[act]
            extra = {"alpha": 1.0 / 6} if act == "hardsigmoid" else {}  # PyTorch's Hardsigmoid: x/6 + 0.5
            self.nodes.append(helper.make_node(op, [x], [out], name=out, **extra))
        else:
            self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def add(self, a: str, b: str) -> str:
        from onnx import helper

        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def head(self, x: str, channels: int, classes: int = 1000) -> str:
        from onnx import helper, numpy_helper

        self.nodes += [
            helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
            helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        ]
        weight = self.rng.standard_normal((classes, channels)) * np.sqrt(1.0 / channels)
        self.inits += [
            numpy_helper.from_array(weight.astype(np.float32), "fc_w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
        ]
        return "logits"

    def model(self, name: str, size: int = 224, classes: int = 1000) -> Any:
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        model.metadata_props.add(key="edgecam.model_name", value=name)
        onnx.checker.check_model(model)
        return model


# (expansion t, output channels c, repeats n, first stride s): Sandler et al. 2018, table 2.
MOBILENET_V2_BLOCKS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(seed: int = 0) -> Any:
    """MobileNetV2 1.0, 224×224, 3.5 M parameters, ~300 M MACs."""
    b = Builder(seed)
    x = b.conv("image", 3, 32, 3, stride=2, act="relu6")
    c_in = 32
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            y = b.conv(x, c_in, hidden, 1, act="relu6") if t != 1 else x
            y = b.conv(y, hidden, hidden, 3, stride=stride, groups=hidden, act="relu6")
            y = b.conv(y, hidden, c, 1)  # linear bottleneck
            x = b.add(x, y) if stride == 1 and c_in == c else y
            c_in = c
    x = b.conv(x, c_in, 1280, 1, act="relu6")
    b.head(x, 1280)
    return b.model("mobilenet_v2")


def resnet18(seed: int = 0) -> Any:
    """ResNet-18, 224×224, 11.7 M parameters, ~1.8 G MACs."""
    from onnx import helper

    b = Builder(seed)
    x = b.conv("image", 3, 64, 7, stride=2, act="relu")
    b.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool0"], name="pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, c_in = "pool0", 64
    for c, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            y = b.conv(x, c_in, c, 3, stride=s, act="relu")
            y = b.conv(y, c, c, 3)
            shortcut = b.conv(x, c_in, c, 1, stride=s) if s != 1 or c_in != c else x
            x = b.activation(b.add(y, shortcut), "relu")
            c_in = c
    b.head(x, 512)
    return b.model("resnet18")


SHAPES = {"mobilenet_v2": mobilenet_v2, "resnet18": resnet18}


def write(name: str, directory: Path) -> Path:
    """Save the named shape as ONNX in `directory` (once) and return its path."""
    import onnx

    path = Path(directory) / f"{name}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(SHAPES[name](), str(path))
    return path
