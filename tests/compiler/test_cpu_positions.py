"""A channels-last conv's output rows and columns as one axis of positions, padded where no tile
divides it (compiler/targets/cpu_positions.py): what the scheduled kernel looks like, and that the
built library computes what ONNX Runtime does, epilogues (bias, ReLU6, residual add) included."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from convnets import save_graph
from onnx import helper, numpy_helper

from edgecam.compiler.targets.base import create_target


def _x86() -> Any:
    return create_target("x86_64", mcpu="x86-64-v3")  # AVX2: 8 float lanes, 12 accumulators


def _net(
    path: Path, channels: int, size: int, outputs: int, kernel: int = 1, epilogue: str = "relu6"
) -> Path:
    """A k×k conv (pad k//2) of `channels` → `outputs` on a size × size map, then `epilogue`: "relu6"
    (bias + Clip), "residual" (bias + the input added back; outputs == channels) or "none"."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((outputs, channels, kernel, kernel)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(weight, "w")]
    pads = [kernel // 2] * 4
    if epilogue == "none":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=pads)]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"))
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads)]
        if epilogue == "relu6":
            inits += [
                numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
            ]
            nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
        else:
            nodes.append(helper.make_node("Add", ["c", "x"], ["y"]))
    return save_graph(path, nodes, [1, channels, size, size], [1, outputs, size, size], inits)


def _relax(path: Path) -> Any:
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), keep_params_in_input=False)


def _kernel(path: Path) -> str:
    target = _x86()
    tvm_target = target.tvm_target()
    with tvm_target:
        module = target.pipeline(tvm_target)(target.prepare(_relax(path)))
    [script] = [f.script() for gv, f in module.functions.items() if "conv2d" in gv.name_hint]
    return str(script)


def test_positions_of_a_7x7_map_are_padded_to_a_multiple_of_the_tile(tmp_path: Path) -> None:
    # 49 positions take tiles of 1 or 7 only; 7 positions × 1 vector does 7 multiply-adds per 8
    # loads. Padded to 50, the tile is 2 vectors × 5 positions.
    script = _kernel(_net(tmp_path / "m.onnx", 160, 7, 96))
    # The input, copied into [positions, channels] with a zero row after the 49 real ones ...
    assert "T.sblock_alloc_buffer((T.int64(50), T.int64(160)))" in script
    assert "T.if_then_else(v0 < T.int64(49)" in script
    # ... the conv computes 50 rows in tiles of 5 positions × 2 vectors of 8 channels ...
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(50), T.int64(96)))" in script
    reduction = script[script.index("for ax2 in range(T.int64(160)):") :]
    assert re.search(r"in T\.unroll\(T\.int64\(5\)\):\n\s+for \w+ in T\.unroll\(T\.int64\(2\)\):", reduction)
    # ... and the epilogue stores the real positions only.
    assert re.search(r"T\.where\(.* < T\.int64\(49\)\)", script)


def test_positions_that_a_tile_divides_are_not_padded(tmp_path: Path) -> None:
    script = _kernel(_net(tmp_path / "m.onnx", 96, 14, 576))
    assert "_pad" not in script and "T.where" not in script
    # The buffer between the conv and its epilogue holds the 196 positions as one axis.
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(196), T.int64(576)))" in script


def test_a_depthwise_conv_keeps_its_rows(tmp_path: Path) -> None:
    # Its input depends on the channels too: a tile is a run of one output row, as before.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=32, pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "dw.onnx", nodes, [1, 32, 14, 14], [1, 32, 14, 14], inits)
    script = _kernel(path)
    assert "T.int64(196)" not in script


@pytest.mark.parametrize(
    ("channels", "size", "outputs", "kernel", "epilogue", "padded"),
    [
        (160, 7, 96, 1, "relu6", True),  # bias + ReLU6
        (96, 7, 96, 1, "residual", True),  # the epilogue reads a second input
        (48, 7, 48, 1, "none", True),  # no epilogue: the conv's own write-back
        (48, 7, 40, 1, "relu6", False),  # 5 vectors of channels: no padded tile pays
        (32, 14, 96, 1, "relu6", False),
        (16, 7, 32, 3, "relu6", False),  # a full 3×3 conv: fused over a padded input copy
        (24, 14, 48, 1, "none", False),
    ],
)
def test_the_library_matches_onnxruntime(
    tmp_path: Path, channels: int, size: int, outputs: int, kernel: int, epilogue: str, padded: bool
) -> None:
    import tvm
    from tvm import relax

    path = _net(tmp_path / "m.onnx", channels, size, outputs, kernel, epilogue)
    script = _kernel(path)
    assert f"T.int64({size * size})" in script  # rows and columns are one axis of positions
    assert ("reindex_pad" in script) == padded
    x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = _x86().build(_relax(path))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
