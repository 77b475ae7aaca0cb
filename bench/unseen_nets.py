"""Architectures no edgecam schedule was written for, built in code with seeded random weights (no
download), 1×3×224×224, opset 17, as PyTorch exports them for inference (BatchNorm folded into the
conv bias where a conv precedes it, SiLU as Sigmoid·Mul, HardSwish/HardSigmoid ops): the operator mix
of modern camera networks: squeeze-excitation, SiLU and hard-swish, grouped convolutions, dense
concatenation, fire modules, channel shuffle, ghost modules, inception branches.

Depths follow the published networks; where a network is several GMACs (DenseNet-121, ResNeXt-50)
the stage repeats are cut (said per builder) so a run of the whole set fits minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from shapes import Builder


class Net(Builder):
    """shapes.Builder plus the blocks these families are made of."""

    def node(self, op: str, inputs: list[str], kind: str, outputs: int = 1, **attrs: Any) -> list[str]:
        from onnx import helper

        name = self._name(kind)
        names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names

    def const(self, kind: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name(kind)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def mul(self, a: str, b: str) -> str:
        return self.node("Mul", [a, b], "mul")[0]

    def concat(self, parts: list[str]) -> str:
        return self.node("Concat", parts, "concat", axis=1)[0]

    def pool(self, x: str, op: str, k: int, stride: int, pad: int = 0) -> str:
        return self.node(op, [x], "pool", kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)[0]

    def batchnorm(self, x: str, channels: int) -> str:
        """An unfoldable BatchNorm (DenseNet's pre-activation: no conv right before it)."""
        rng = self.rng
        scale = self.const("bn_scale", (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32))
        bias = self.const("bn_bias", (0.1 * rng.standard_normal(channels)).astype(np.float32))
        mean = self.const("bn_mean", (0.1 * rng.standard_normal(channels)).astype(np.float32))
        var = self.const("bn_var", (1 + 0.1 * rng.random(channels)).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, bias, mean, var], "bn")[0]

    def squeeze_excite(self, x: str, channels: int, reduced: int, act: str, gate: str) -> str:
        """Global pool → 1×1 reduce (`act`) → 1×1 expand → `gate` (sigmoid, hard-sigmoid) → channel
        multiply."""
        pooled = self.node("GlobalAveragePool", [x], "se_pool")[0]
        squeezed = self.conv(pooled, channels, reduced, 1, act=act)
        weights = self.conv(squeezed, reduced, channels, 1, act=gate)
        return self.mul(x, weights)

    def channel_shuffle(self, x: str, channels: int, size: int, groups: int = 2) -> str:
        shape = self.const("shape", np.array([1, groups, channels // groups, size, size], np.int64))
        back = self.const("shape", np.array([1, channels, size, size], np.int64))
        grouped = self.node("Reshape", [x, shape], "reshape")[0]
        swapped = self.node("Transpose", [grouped], "transpose", perm=[0, 2, 1, 3, 4])[0]
        return self.node("Reshape", [swapped, back], "reshape")[0]

    def split(self, x: str, channels: int) -> list[str]:
        sizes = self.const("split", np.array([channels // 2, channels // 2], np.int64))
        return self.node("Split", [x, sizes], "split", outputs=2, axis=1)


def _divisible(value: float, divisor: int = 8) -> int:
    """Channel counts rounded as the reference implementations do (torchvision's _make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# (expansion, channels, repeats, stride, kernel): Tan & Le 2019, table 1.
EFFICIENTNET_B0 = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                   (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]  # fmt: skip


def efficientnet_b0(seed: int = 0) -> Any:
    """EfficientNet-B0: MBConv with SiLU and squeeze-excitation (~390 M MACs)."""
    b = Net(seed)
    x, c_in = b.conv("image", 3, 32, 3, stride=2, act="silu"), 32
    for t, c, n, s, k in EFFICIENTNET_B0:
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), c_in * t
            y = b.conv(x, c_in, hidden, 1, act="silu") if t != 1 else x
            y = b.conv(y, hidden, hidden, k, stride=stride, groups=hidden, act="silu")
            y = b.squeeze_excite(y, hidden, max(1, c_in // 4), "silu", "sigmoid")
            y = b.conv(y, hidden, c, 1)
            x, c_in = (b.add(x, y) if stride == 1 and c_in == c else y), c
    b.head(b.conv(x, c_in, 1280, 1, act="silu"), 1280)
    return b.model("efficientnet_b0")


# (kernel, expanded, out, SE, activation, stride): Howard et al. 2019, table 1 (Large).
MOBILENET_V3_LARGE = [
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]  # fmt: skip


def mobilenet_v3_large(seed: int = 0) -> Any:
    """MobileNetV3-Large: hard-swish, SE with hard-sigmoid gates (~220 M MACs)."""
    b = Net(seed)
    x, c_in = b.conv("image", 3, 16, 3, stride=2, act="hardswish"), 16
    for k, hidden, c, se, act, stride in MOBILENET_V3_LARGE:
        y = b.conv(x, c_in, hidden, 1, act=act) if hidden != c_in else x
        y = b.conv(y, hidden, hidden, k, stride=stride, groups=hidden, act=act)
        if se:
            y = b.squeeze_excite(y, hidden, _divisible(hidden / 4), "relu", "hardsigmoid")
        y = b.conv(y, hidden, c, 1)
        x, c_in = (b.add(x, y) if stride == 1 and c_in == c else y), c
    x = b.conv(x, c_in, 960, 1, act="hardswish")
    b.head(x, 960)
    return b.model("mobilenet_v3_large")


def _resnet_stem(b: Net, width: int = 64) -> str:
    x = b.conv("image", 3, width, 7, stride=2, act="relu")
    return b.pool(x, "MaxPool", 3, 2, 1)


def resnext(seed: int = 0) -> Any:
    """ResNeXt 32×4d bottlenecks with ResNet-26's repeats (2, 2, 2, 2; ResNeXt-50 has 3, 4, 6, 3:
    2.5 G instead of 4.2 G MACs): grouped 3×3 convs of 32 groups."""
    b = Net(seed)
    x, c_in = _resnet_stem(b), 64
    for stage, (repeats, stride) in enumerate(((2, 1), (2, 2), (2, 2), (2, 2))):
        width, c = 128 * 2**stage, 256 * 2**stage
        for i in range(repeats):
            s = stride if i == 0 else 1
            y = b.conv(x, c_in, width, 1, act="relu")
            y = b.conv(y, width, width, 3, stride=s, groups=32, act="relu")
            y = b.conv(y, width, c, 1)
            shortcut = b.conv(x, c_in, c, 1, stride=s) if s != 1 or c_in != c else x
            x, c_in = b.activation(b.add(y, shortcut), "relu"), c
    b.head(x, c_in)
    return b.model("resnext26_32x4d")


def densenet(seed: int = 0) -> Any:
    """DenseNet-BC, growth 32, blocks of (6, 12, 12, 8) layers (DenseNet-121: 6, 12, 24, 16; 2.4 G
    instead of 2.9 G MACs): pre-activation BN-ReLU-conv layers whose outputs concatenate."""
    b = Net(seed)
    x, c = _resnet_stem(b), 64
    for block, layers in enumerate((6, 12, 12, 8)):
        for _ in range(layers):
            y = b.conv(b.activation(b.batchnorm(x, c), "relu"), c, 128, 1, act="relu")
            y = b.conv(y, 128, 32, 3)
            x, c = b.concat([x, y]), c + 32
        if block < 3:  # transition: BN-ReLU-conv 1×1 halving the channels, 2×2 average pool
            x = b.conv(b.activation(b.batchnorm(x, c), "relu"), c, c // 2, 1)
            x, c = b.pool(x, "AveragePool", 2, 2), c // 2
    b.head(b.activation(b.batchnorm(x, c), "relu"), c)
    return b.model("densenet_bc")


def squeezenet(seed: int = 0) -> Any:
    """SqueezeNet 1.1: fire modules (1×1 squeeze, 1×1 and 3×3 expands concatenated), ~350 M MACs."""
    b = Net(seed)
    x = b.pool(b.conv("image", 3, 64, 3, stride=2, act="relu"), "MaxPool", 3, 2)
    c_in = 64
    for index, (squeeze, expand) in enumerate(((16, 64), (16, 64), (32, 128), (32, 128), (48, 192),
                                                (48, 192), (64, 256), (64, 256))):  # fmt: skip
        s = b.conv(x, c_in, squeeze, 1, act="relu")
        x = b.concat([b.conv(s, squeeze, expand, 1, act="relu"), b.conv(s, squeeze, expand, 3, act="relu")])
        c_in = 2 * expand
        if index in (1, 3):
            x = b.pool(x, "MaxPool", 3, 2)
    x = b.conv(x, c_in, 1000, 1, act="relu")  # the classifier is a conv, then a global average pool
    pooled = b.node("GlobalAveragePool", [x], "pool")[0]
    b.node("Flatten", [pooled], "flatten")
    b.nodes[-1].output[0] = "logits"
    return b.model("squeezenet1_1")


def shufflenet_v2(seed: int = 0) -> Any:
    """ShuffleNetV2 1.0×: channel split, depthwise branch, concat, channel shuffle (~150 M MACs)."""
    b = Net(seed)
    x = b.pool(b.conv("image", 3, 24, 3, stride=2, act="relu"), "MaxPool", 3, 2, 1)
    c_in, size = 24, 56
    for c, repeats in ((116, 4), (232, 8), (464, 4)):
        for i in range(repeats):
            half = c // 2
            if i == 0:  # downsampling unit: both branches see the whole input
                left = b.conv(b.conv(x, c_in, c_in, 3, stride=2, groups=c_in), c_in, half, 1, act="relu")
                right = b.conv(x, c_in, half, 1, act="relu")
                size //= 2
            else:
                left, right = b.split(x, c)
            right = b.conv(right, c_in if i == 0 else half, half, 1, act="relu") if i else right
            right = b.conv(right, half, half, 3, stride=2 if i == 0 else 1, groups=half)
            right = b.conv(right, half, half, 1, act="relu")
            x, c_in = b.channel_shuffle(b.concat([left, right]), c, size), c
    b.head(b.conv(x, c_in, 1024, 1, act="relu"), 1024)
    return b.model("shufflenet_v2_x1_0")


def regnet_y(seed: int = 0) -> Any:
    """RegNetY-400MF: bottlenecks of grouped 3×3 convs (group width 8) with squeeze-excitation."""
    b = Net(seed)
    x, c_in = b.conv("image", 3, 32, 3, stride=2, act="relu"), 32
    for c, repeats in ((48, 1), (104, 3), (208, 6), (440, 6)):
        for i in range(repeats):
            s = 2 if i == 0 else 1
            y = b.conv(x, c_in, c, 1, act="relu")
            y = b.conv(y, c, c, 3, stride=s, groups=c // 8, act="relu")
            y = b.squeeze_excite(y, c, max(1, c_in // 4), "relu", "sigmoid")
            y = b.conv(y, c, c, 1)
            shortcut = b.conv(x, c_in, c, 1, stride=s) if s != 1 or c_in != c else x
            x, c_in = b.activation(b.add(y, shortcut), "relu"), c
    b.head(x, c_in)
    return b.model("regnety_400mf")


# (kernel, expanded, out, SE, stride): Han et al. 2020, table 1.
GHOSTNET = [(3, 16, 16, False, 1), (3, 48, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2),
            (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 184, 80, False, 1),
            (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1),
            (5, 672, 160, True, 2), (5, 960, 160, False, 1), (5, 960, 160, True, 1),
            (5, 960, 160, False, 1), (5, 960, 160, True, 1)]  # fmt: skip


def ghostnet(seed: int = 0) -> Any:
    """GhostNet 1.0×: ghost modules (a 1×1 conv for half the channels, a cheap depthwise 3×3 of those
    for the other half, concatenated), SE with hard-sigmoid gates (~150 M MACs)."""
    b = Net(seed)

    def ghost(x: str, c_in: int, c_out: int, act: str) -> str:
        primary = b.conv(x, c_in, c_out // 2, 1, act=act)
        cheap = b.conv(primary, c_out // 2, c_out // 2, 3, groups=c_out // 2, act=act)
        return b.concat([primary, cheap])

    x, c_in = b.conv("image", 3, 16, 3, stride=2, act="relu"), 16
    for k, hidden, c, se, stride in GHOSTNET:
        y = ghost(x, c_in, hidden, "relu")
        if stride == 2:
            y = b.conv(y, hidden, hidden, k, stride=2, groups=hidden)
        if se:
            y = b.squeeze_excite(y, hidden, _divisible(hidden / 4, 4), "relu", "hardsigmoid")
        y = ghost(y, hidden, c, "")
        shortcut = (
            x if stride == 1 and c_in == c else b.conv(b.conv(x, c_in, c_in, k, stride, c_in), c_in, c, 1)
        )
        x, c_in = b.add(y, shortcut), c
    b.head(b.conv(x, c_in, 960, 1, act="relu"), 960)
    return b.model("ghostnet")


def inception(seed: int = 0) -> Any:
    """GoogLeNet (Inception v1) without auxiliary heads: four parallel branches concatenated."""
    b = Net(seed)
    x = b.pool(b.conv("image", 3, 64, 7, stride=2, act="relu"), "MaxPool", 3, 2, 1)
    x = b.conv(b.conv(x, 64, 64, 1, act="relu"), 64, 192, 3, act="relu")
    x, c_in = b.pool(x, "MaxPool", 3, 2, 1), 192
    # (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool proj) per module; "M": max pool between stages.
    modules = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M", (192, 96, 208, 16, 48, 64),
               (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
               (256, 160, 320, 32, 128, 128), "M", (256, 160, 320, 32, 128, 128),
               (384, 192, 384, 48, 128, 128)]  # fmt: skip
    for spec in modules:
        if spec == "M":
            x = b.pool(x, "MaxPool", 3, 2, 1)
            continue
        one, r3, c3, r5, c5, proj = spec  # type: ignore[misc]
        branches = [
            b.conv(x, c_in, one, 1, act="relu"),
            b.conv(b.conv(x, c_in, r3, 1, act="relu"), r3, c3, 3, act="relu"),
            b.conv(b.conv(x, c_in, r5, 1, act="relu"), r5, c5, 3, act="relu"),  # torchvision's 3×3, not 5×5
            b.conv(b.pool(x, "MaxPool", 3, 1, 1), c_in, proj, 1, act="relu"),
        ]
        x, c_in = b.concat(branches), one + c3 + c5 + proj
    b.head(x, c_in)
    return b.model("googlenet")


NETWORKS: dict[str, Callable[[], Any]] = {
    "efficientnet_b0": efficientnet_b0,
    "mobilenet_v3_large": mobilenet_v3_large,
    "resnext26_32x4d": resnext,
    "densenet_bc": densenet,
    "squeezenet1_1": squeezenet,
    "shufflenet_v2": shufflenet_v2,
    "regnety_400mf": regnet_y,
    "ghostnet": ghostnet,
    "googlenet": inception,
}


def write(name: str, directory: Path) -> Path:
    """Save the named network as ONNX in `directory` (rebuilt each time: a seconds' job) and return it."""
    import onnx

    path = Path(directory) / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(NETWORKS[name](), str(path))
    return path
