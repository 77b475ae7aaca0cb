"""What the aarch64 int8 tests build and look at: QDQ models whose outputs are the layers' exact
integer sums (unit scales, a power-of-two requantization, so ONNX Runtime's float and integer paths
and edgecam's integer code all give the same numbers to the bit), the dot step of each packed GEMM,
and the instructions in a library."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from edgecam.compiler.lowering.packed_gemm import COMPUTE
from edgecam.compiler.targets import arm_dots

ZERO_POINTS = {"uint8": 37, "int8": -20}


def _quantize(name: str, activations: str, scale: float, zero: int) -> tuple[list[Any], list[Any]]:
    """QuantizeLinear → DequantizeLinear of `name` (nodes, initializers): the QDQ pair of an activation."""
    from onnx import helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.float32(scale), f"{name}_s"),
        numpy_helper.from_array(np.array(zero, dtype=activations), f"{name}_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"]),
    ]
    return nodes, inits


def _weights(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
    """Full-range int8 weights (both extremes included) dequantized with scale 1."""
    from onnx import helper, numpy_helper

    values = rng.integers(-128, 128, size=shape).astype(np.int8)
    values.flat[:2] = (-128, 127)
    inits = [
        numpy_helper.from_array(values, f"{name}_q"),
        numpy_helper.from_array(np.float32(1.0), f"{name}_s"),
        numpy_helper.from_array(np.int8(0), f"{name}_z"),
    ]
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name])
    return [node], inits


def exact_conv(path: Path, activations: str) -> Path:
    """x [1, 6, 9, 9] → Conv 3×3 stride 2 pad 1 (6 → 16: channels padded to whole groups, borders
    padded) → requantized by 1/1024 → Conv 1×1 (16 → 32) → y [1, 32, 5, 5], the raw int32 sums."""
    from convnets import save_graph
    from onnx import helper

    rng = np.random.default_rng(7)
    zero = ZERO_POINTS[activations]
    q_x, i_x = _quantize("x", activations, 1.0, zero)
    w1, i_w1 = _weights("w1", (16, 6, 3, 3), rng)
    q_c, i_c = _quantize("c1", activations, 1024.0, 0 if activations == "int8" else 128)
    w2, i_w2 = _weights("w2", (32, 16, 1, 1), rng)
    nodes = [
        *q_x,
        *w1,
        helper.make_node("Conv", ["x_dq", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        *q_c,
        *w2,
        helper.make_node("Conv", ["c1_dq", "w2"], ["y"]),
    ]
    return save_graph(path, nodes, [1, 6, 9, 9], [1, 32, 5, 5], [*i_x, *i_w1, *i_c, *i_w2])


def exact_dense(path: Path, activations: str) -> Path:
    """x [1, 60] → MatMul by [60, 48] → y, the raw int32 sums."""
    from convnets import save_graph
    from onnx import helper

    q_x, i_x = _quantize("x", activations, 1.0, ZERO_POINTS[activations])
    w, i_w = _weights("w", (60, 48), np.random.default_rng(8))
    nodes = [*q_x, *w, helper.make_node("MatMul", ["x_dq", "w"], ["y"])]
    return save_graph(path, nodes, [1, 60], [1, 48], [*i_x, *i_w])


def feeds(shape: list[int], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs past both ends of the 8-bit range (the quantize saturates them) and everything between."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-200, 300, size=shape).round().astype(np.float32)} for _ in range(count)]


def dot_steps(mod: Any) -> list[str]:
    """The aarch64 dot step of each packed GEMM of a prepared module."""
    from tvm import tirx

    steps = []
    for gv, func in mod.functions.items():
        if gv.name_hint.startswith(COMPUTE) and isinstance(func, tirx.PrimFunc):
            script = func.script()
            steps += [d.intrinsic for d in arm_dots.DOTS if f'"{d.intrinsic}"' in script]
    return steps


def instructions(library: Path) -> collections.Counter[str]:
    """How often each mnemonic occurs in the disassembled aarch64 `library` (objdump's instruction
    lines are "address:<tab>encoding<tab>mnemonic operands")."""
    listing = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return collections.Counter(
        fields[2].split()[0] for line in listing.splitlines() if len(fields := line.split("\t")) >= 3
    )
