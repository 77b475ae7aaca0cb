"""edgecam's untuned CPU schedules (RegisterTiles, ParallelRows) and the channels-last rewrite they
rely on: which kernels each takes, what it does to their loops, and that the built library still
computes what ONNX Runtime does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from convnets import save_graph
from onnx import helper, numpy_helper
from x86_kernels import build, kernel, relax_module

from edgecam.compiler.targets.base import create_target
from edgecam.compiler.targets.cpu_tiles import MIN_ROW, choose_tile, vector_lanes


def _conv(
    path: Path, channels: int, size: int, depthwise: bool = False, kernel: int = 3, outputs: int = 0
) -> Path:
    """k×k conv (pad k//2) + bias + ReLU6 on a channels × size × size input; `outputs` channels out
    (default: `channels`)."""
    rng = np.random.default_rng(0)
    group = channels if depthwise else 1
    outputs = outputs or channels
    weight = rng.standard_normal((outputs, channels // group, kernel, kernel)).astype(np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=group, pads=[pad] * 4),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    return save_graph(path, nodes, [1, channels, size, size], [1, outputs, size, size], inits)


def _dense(path: Path, inputs: int, outputs: int) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((outputs, inputs)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"),
    ]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    return save_graph(path, nodes, [1, inputs], [1, outputs], inits)


def _kernel(path: Path, name: str, start: str = "channels_last") -> str:
    return kernel(path, name, start)


def _top_loops(script: str) -> list[str]:
    body = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [line.strip() for line in body if line.startswith("    for ")]


def test_rows_no_vector_fills_run_in_parallel_with_the_row_innermost(tmp_path: Path) -> None:
    # NCHW (no channels-last rewrite) with 7-wide rows: no tile of whole vectors (8 or 4 lanes), so
    # RegisterTiles declines and ParallelRows takes the depthwise conv.
    channels, size = 8, 7
    script = _kernel(
        _conv(tmp_path / "conv.onnx", channels, size, depthwise=True), "conv2d", start="imported"
    )
    # One loop at the top: batch × channel × output row, shared out over the thread pool ...
    assert _top_loops(script) == [f"for ax0_ax1_fused in T.parallel(T.int64({channels * size})):"]
    # ... inside it the 3×3 window, then the row's outputs innermost, where LLVM vectorizes; the
    # ReLU6 runs in the same parallel iteration.
    assert f"T.grid(T.int64(3), T.int64(3), T.int64({size})):" in script
    assert re.search(
        rf"\n        for \w+ in range\(T\.int64\({size}\)\):\n\s+with T\.sblock\(\"T_minimum", script
    )


def test_a_channels_last_depthwise_conv_is_tiled_along_its_channels(tmp_path: Path) -> None:
    # Its data depends on every output axis, so a tile's rows are output columns, each a vector of
    # channels read from the input once per window step.
    script = _kernel(_conv(tmp_path / "conv.onnx", 32, 14, depthwise=True), "conv2d")
    # Its padding stays a bounds check in the reads: a padded copy would cost as much as the conv.
    [parallel] = _top_loops(script)
    assert "T.parallel(" in parallel and "pad_temp" not in script
    # The 3×3 window inside the tile loop, unrolled (LLVM then loads each input vector once for
    # all the taps and positions that read it).
    window = re.search(
        r"for \w+ in T\.unroll\(T\.int64\(3\)\):\s+for \w+ in T\.unroll\(T\.int64\(3\)\):", script
    )
    assert window is not None, script
    assert re.search(r"for \w+ in T\.vectorized\(T\.int64\(8\)\):", script[window.end() :])


def test_a_kernel_with_short_rows_is_left_alone(tmp_path: Path) -> None:
    script = _kernel(_conv(tmp_path / "conv.onnx", 8, MIN_ROW - 1), "conv2d", start="imported")
    assert "T.parallel(" not in script


def test_a_channels_last_conv_keeps_a_register_tile_over_its_whole_reduction(tmp_path: Path) -> None:
    # 32 → 96 channels, 3×3, on a 14×14 map, AVX2 (8 lanes, 12 accumulator registers): the tile is
    # 3 vectors of output channels × 4 output positions (12 multiply-adds per 3 loads and 4
    # broadcasts), the positions counted across rows (compiler/targets/cpu_positions.py).
    script = _kernel(_conv(tmp_path / "conv.onnx", 32, 14, outputs=96), "conv2d")
    assert "(T.int64(1), T.int64(14), T.int64(14), T.int64(96))" in script  # NHWC output
    # One parallel loop over tiles: 4 runs of 24 channels × 49 runs of 4 positions (after the
    # padded input copy's). The weights (27648 values) outnumber the input (8192): the channels
    # loop is outermost, so a thread's consecutive tiles read one slice of the weights.
    padding, parallel = _top_loops(script)
    assert "T.parallel(T.int64(16))" in padding and "T.parallel(T.int64(196))" in parallel
    # The window and the input channels, serial, around the tile.
    tile = script[script.index("in T.grid(T.int64(3), T.int64(3), T.int64(32)):") :]
    assert re.search(r"for \w+ in T\.unroll\(T\.int64\(4\)\):", tile)  # positions
    assert re.search(r"for \w+ in T\.unroll\(T\.int64\(3\)\):", tile)  # vectors of channels
    assert re.search(r"for \w+ in T\.vectorized\(T\.int64\(8\)\):", tile)
    # The accumulators are a tile-sized buffer allocated inside the parallel loop, in global scope:
    # TVM puts small global allocations on the stack (where LLVM keeps them in registers) and local
    # ones in a workspace allocated on every iteration.
    assert 'scope="local"' not in script


def test_a_full_conv_reads_a_padded_copy_of_its_input(tmp_path: Path) -> None:
    # Each input value serves 9 × 32 multiply-adds: filling a padded copy first (rows in parallel)
    # is cheaper than a bounds check on every broadcast input value.
    script = _kernel(_conv(tmp_path / "conv.onnx", 32, 14), "conv2d")
    padding, tiles = _top_loops(script)
    assert "pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(16), T.int64(16), T.int64(32)))" in script
    assert "T.parallel(T.int64(16))" in padding and "T.parallel(" in tiles
    assert "T.if_then_else" not in script[script.index(tiles) :]


def test_a_dense_layer_at_batch_1_is_tiled_along_its_outputs(tmp_path: Path) -> None:
    # As imported: prepared, a float model's dense layers are packed GEMMs (test_packed_gemm.py).
    script = _kernel(_dense(tmp_path / "dense.onnx", 96, 1000), "matmul", start="imported")
    [parallel] = _top_loops(script)
    assert "T.parallel(" in parallel
    assert re.search(r"for \w+ in T\.vectorized\(T\.int64\(8\)\):", script)


@pytest.mark.parametrize(
    ("height", "width", "channels", "lanes", "tile"),
    [
        (960, 1, 7, 16, (32, 7)),  # 960 channels × 7 columns, AVX-512: 2 vectors × 7 columns
        (96, 1, 112, 16, (32, 8)),  # 2 vectors × 8 positions = 16 of 16 registers
        (576, 1, 196, 8, (24, 4)),  # AVX2: 3 vectors × 4 positions = 12 registers
        (960, 1, 49, 8, (8, 7)),  # 49 positions, not paddable: 1 vector × 7 positions
        (1000, 1, 1, 8, (40, 1)),  # a dense layer at batch 1: 5 vectors of 8 outputs
        (49, 1, 8, 16, None),  # no run of whole vectors: declined
        (7, 7, 960, 16, None),  # 49 fused positions: declined
        (4, 28, 32, 16, (4, 2)),  # 4 fused rows of 28 = 7 vectors, × 2 channels = 14 registers
    ],
)
def test_the_tile_fills_whole_vectors_within_the_register_budget(
    height: int, width: int, channels: int, lanes: int, tile: tuple[int, int] | None
) -> None:
    assert choose_tile(height, width, channels, lanes, budget=16 if lanes == 16 else 12) == tile


@pytest.mark.parametrize(("mcpu", "lanes"), [("x86-64-v3", 8), ("znver4", 16), ("x86-64", 4)])
def test_vector_lanes_follow_the_cpu(mcpu: str, lanes: int) -> None:
    assert vector_lanes(create_target("x86_64", mcpu=mcpu).tvm_target()) == lanes


def test_relu6_and_convs_stay_channels_last_between_the_model_edges(tmp_path: Path) -> None:
    # conv → ReLU6 (ONNX Clip, which TVM imports as TE max/min) → conv: one transpose in, one out.
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, [1, 8, 7, 7], [1, 8, 7, 7], inits)
    text = relax_module(path)["main"].script()
    assert text.count("R.permute_dims(") + text.count("R.layout_transform(") == 2
    # Both convs are GEMMs over packed weights (test_packed_gemm.py) between the edges.
    assert len(re.findall(r"R\.call_tir\(packed_gemm\d*,", text)) == 2
    assert "R.call_tir(maximum" not in text  # Clip's TE max/min became relax.maximum/minimum
    assert "R.call_tir(minimum" not in text


@pytest.mark.parametrize("start", ["channels_last", "prepared"])
@pytest.mark.parametrize(
    "model",
    ["full", "depthwise", "pointwise-7x7", "pointwise-14x14-stride", "dense"],
)
def test_the_scheduled_library_matches_onnxruntime(tmp_path: Path, model: str, start: str) -> None:
    import tvm
    from tvm import relax

    if model == "dense":
        path, shape = _dense(tmp_path / "m.onnx", 96, 1000), (1, 96)
    elif model == "full":
        path, shape = _conv(tmp_path / "m.onnx", 16, 20), (1, 16, 20, 20)
    elif model == "depthwise":
        path, shape = _conv(tmp_path / "m.onnx", 16, 20, depthwise=True), (1, 16, 20, 20)
    elif model == "pointwise-7x7":
        path, shape = _conv(tmp_path / "m.onnx", 32, 7, kernel=1), (1, 32, 7, 7)
    else:
        path, shape = _conv(tmp_path / "m.onnx", 48, 14, kernel=1), (1, 48, 14, 14)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = build(path, start)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
