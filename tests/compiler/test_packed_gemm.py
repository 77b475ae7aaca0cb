"""Pointwise convs and dense layers as GEMMs over packed weights (compiler/lowering/packed_gemm.py)
and their CPU schedule (compiler/targets/cpu_gemm.py): which ops are taken, the packed layout, the
register tile, padded positions, and that the library computes what ONNX Runtime does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from convnets import conv_net, save_graph
from onnx import helper, numpy_helper
from x86_kernels import build, kernel, relax_module

from edgecam.compiler.lowering.packed_gemm import COMPUTE, Tile, choose_gemm_tile, output_vectors, pack


def _prepared(path: Path) -> str:
    return str(relax_module(path)["main"].script())


def test_a_pointwise_conv_becomes_a_gemm_over_packed_weights(tmp_path: Path) -> None:
    module = relax_module(conv_net(tmp_path / "m.onnx", 160, 7, 96))
    text = str(module["main"].script())
    assert "R.nn.conv2d" not in text and f"R.call_tir({COMPUTE}," in text
    # 96 outputs in blocks of 16 (2 AVX2 vectors): [96 / 16, 1, 1, 160 channels, 16].
    assert [c.shape for c in _constants(module) if c.ndim == 5] == [(6, 1, 1, 160, 16)]


def _constants(module: Any) -> list[np.ndarray]:
    from tvm import relax

    found: list[np.ndarray] = []

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_constant_(self, const: Any) -> None:
            found.append(const.data.numpy())

        def visit_generic_const_(self, const: Any) -> None:
            found.append(const.value.numpy())

    _Visitor().visit_expr(module["main"])
    return found


@pytest.mark.parametrize(
    "conv",
    [
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},  # a full conv
        {"kernel_shape": [3, 3], "strides": [2, 2], "dilations": [2, 2]},
        {"strides": [2, 2]},
    ],
)
def test_full_and_strided_convs_are_packed_gemms_too(tmp_path: Path, conv: dict[str, Any]) -> None:
    text = _prepared(conv_net(tmp_path / "m.onnx", 16, 8, 16, **conv))
    assert "R.nn.conv2d" not in text and f"R.call_tir({COMPUTE}," in text


def test_grouped_convs_of_too_few_outputs_per_group_are_merged_gemms(tmp_path: Path) -> None:
    # 8 groups of 2 inputs and 2 outputs; AVX2's narrowest vector is 4: pairs merged, 4 × 4 weights.
    module = relax_module(conv_net(tmp_path / "m.onnx", 16, 8, 16, group=8))
    text = str(module["main"].script())
    assert "R.nn.conv2d" not in text and f"R.call_tir({COMPUTE}," in text
    assert [c.shape for c in _constants(module) if c.ndim == 5] == [(4, 1, 1, 4, 4)]


def test_packing_puts_each_tiles_weights_in_one_run() -> None:
    weights = np.arange(5 * 32, dtype=np.float32).reshape(5, 32)  # [channels, outputs]
    packed = pack(weights, Tile(positions=4, channels=16))
    assert packed.shape == (2, 5, 16) and packed.flags.c_contiguous
    for o in range(32):
        np.testing.assert_array_equal(packed[o // 16, :, o % 16], weights[:, o])
    hwio = np.arange(3 * 3 * 5 * 48, dtype=np.float32).reshape(3, 3, 5, 48)  # a conv's
    packed = pack(hwio, Tile(positions=4, channels=24))
    assert packed.shape == (2, 3, 3, 5, 24)
    for o in range(48):
        np.testing.assert_array_equal(packed[o // 24, ..., o % 24], hwio[..., o])


@pytest.mark.parametrize(
    ("positions", "outputs", "tile"),
    [
        (196, 576, Tile(4, 24)),  # 14×14: 4 positions × 3 vectors divide
        (49, 960, Tile(5, 16)),  # 7×7: 49 positions padded to 50, 5 × 2 vectors
        (49, 40, Tile(7, 8)),  # 5 vectors of outputs: no padded tile pays, 7 × 1
        # 13×13: unpadded only 1 position × 8 vectors (a weight load per multiply-add); padded to 174
        (169, 256, Tile(6, 16)),
    ],
)
def test_the_tile(positions: int, outputs: int, tile: Tile) -> None:
    assert choose_gemm_tile(positions, outputs, lanes=8) == tile


@pytest.mark.parametrize(
    ("outputs", "lanes", "padded", "width"),
    [
        (1000, 16, 1008, 16),  # a classifier: 0.8% more
        (58, 16, 64, 16),  # ShuffleNet's
        (24, 16, 24, 8),  # half-width vectors rather than a third more work
        (12, 16, None, None),  # half-width ones would need padding too: TOPI's
        (10, 8, None, None),  # the bundled CNN's classifier keeps its tuned schedule
        (96, 16, 96, 16),
    ],
)
def test_outputs_round_up_to_whole_vectors(
    outputs: int, lanes: int, padded: int | None, width: int | None
) -> None:
    assert output_vectors(outputs, lanes) == (None if padded is None else (padded, width))


def test_padded_positions_compute_extra_rows_and_store_the_real_ones(tmp_path: Path) -> None:
    script = kernel(conv_net(tmp_path / "m.onnx", 160, 7, 96), COMPUTE)
    # 50 rows: the 50th repeats the 49th (its index clamped), no copy of the input.
    assert "T.sblock_alloc_buffer((T.int64(50), T.int64(96)))" in script
    assert "T.min(" in script and "T.if_then_else" not in script
    # Tiles of 5 positions × 2 vectors of 8 outputs, in parallel; the epilogue only for rows < 49.
    assert re.search(r"T\.parallel\(T\.int64\(60\)\)", script)
    reduction = script[re.search(r"for \w+ in range\(T\.int64\(160\)\):", script).start() :]
    assert re.search(r"in T\.unroll\(T\.int64\(5\)\):\n\s+for \w+ in T\.unroll\(T\.int64\(2\)\):", reduction)
    assert re.search(r"T\.vectorized\(T\.int64\(8\)\)", reduction)
    assert re.search(r"T\.where\(.* < T\.int64\(49\)\)", script)


def test_outputs_that_fill_no_whole_vector_are_padded_and_only_the_real_ones_stored(tmp_path: Path) -> None:
    # ShuffleNet's 58 outputs: 64 computed (weights zero past 58), the conv's result 58 wide.
    module = relax_module(conv_net(tmp_path / "m.onnx", 32, 14, 58))
    [packed] = [c for c in _constants(module) if c.ndim == 5]
    assert packed.shape[0] * packed.shape[-1] == 64
    np.testing.assert_array_equal(
        packed.reshape(-1, 32, packed.shape[-1]).transpose(1, 0, 2).reshape(32, 64)[:, 58:], 0
    )
    script = kernel(conv_net(tmp_path / "m.onnx", 32, 14, 58), COMPUTE)
    assert "T.sblock_alloc_buffer((T.int64(196), T.int64(64)))" in script
    assert "T.Buffer((T.int64(1), T.int64(14), T.int64(14), T.int64(58))" in script


@pytest.mark.parametrize(
    ("channels", "size", "outputs", "epilogue", "batch", "conv"),
    [
        (160, 7, 96, "relu6", 1, None),  # padded positions, bias + ReLU6
        (96, 7, 96, "residual", 1, None),  # the epilogue reads a second input
        (48, 7, 48, "none", 1, None),  # no epilogue but the reshape to rows
        (48, 7, 40, "relu6", 1, None),  # not padded: 7 positions × 1 vector
        (32, 14, 96, "relu6", 1, None),
        (24, 6, 32, "relu6", 2, None),  # batch 2: the positions of both images are one axis
        (16, 14, 32, "relu6", 1, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        (32, 7, 32, "residual", 1, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        (3, 15, 32, "relu6", 1, {"kernel_shape": [3, 3], "pads": [0, 0, 1, 1], "strides": [2, 2]}),
        (8, 11, 16, "none", 2, {"kernel_shape": [3, 3], "pads": [2, 1, 2, 1], "dilations": [2, 1]}),
        (16, 14, 24, "relu6", 1, {"strides": [2, 2]}),
        (32, 13, 58, "relu6", 1, None),  # outputs padded to 64, positions to 174
        (58, 7, 58, "residual", 1, None),
        (16, 14, 12, "relu6", 1, None),  # half-width vectors (4 of AVX2's 8 lanes)
    ],
)
def test_the_library_matches_onnxruntime(
    tmp_path: Path,
    channels: int,
    size: int,
    outputs: int,
    epilogue: str,
    batch: int,
    conv: dict[str, Any] | None,
) -> None:
    import tvm
    from tvm import relax

    path = conv_net(tmp_path / "m.onnx", channels, size, outputs, epilogue, batch, **(conv or {}))
    assert COMPUTE in _prepared(path)
    x = np.random.default_rng(1).standard_normal((batch, channels, size, size)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = build(path)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _dense(path: Path, batch: int, inputs: int, outputs: int) -> Path:
    """ONNX Gemm (transB, as PyTorch exports a Linear) with bias, then ReLU."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((outputs, inputs)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    return save_graph(path, nodes, [batch, inputs], [batch, outputs], inits)


@pytest.mark.parametrize(("batch", "inputs", "outputs"), [(1, 96, 1000), (3, 64, 40)])
def test_a_dense_layer_is_a_packed_gemm_too(tmp_path: Path, batch: int, inputs: int, outputs: int) -> None:
    # At batch 1 a GEMV: one row, a tile of 5 vectors of the 1000 outputs, whose weights each stream
    # from one contiguous run.
    import tvm
    from tvm import relax

    path = _dense(tmp_path / "dense.onnx", batch, inputs, outputs)
    assert "R.matmul" not in _prepared(path) and f"R.call_tir({COMPUTE}," in _prepared(path)
    x = np.random.default_rng(1).standard_normal((batch, inputs)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = build(path)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
