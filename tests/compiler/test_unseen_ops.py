"""The operator mix of networks no schedule was written for (bench/bench_unseen.py): each speed fix
keeps the network's layout and fusion where the bench's profile found them broken, and the build still
computes what ONNX Runtime does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from convnets import conv_net, save_graph
from onnx import helper, numpy_helper
from x86_kernels import build, kernel, relax_module

from edgecam.compiler.lowering.packed_gemm import merge_groups


def _matches_onnxruntime(path: Path, shape: tuple[int, ...]) -> None:
    import tvm
    from tvm import relax

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = relax.VirtualMachine(build(path), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_hard_swish_and_hard_sigmoid_stay_channels_last_between_the_model_edges(tmp_path: Path) -> None:
    """conv → HardSwish → conv → HardSigmoid (MobileNetV3's activation and SE gate), which TVM
    imports as relax.clip, which ConvertLayout cannot move: one transpose in and one out, not a pair
    around each activation."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("HardSwish", ["c1"], ["h"]),
        helper.make_node("Conv", ["h", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c2"], ["y"], alpha=1.0 / 6),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2"),
    ]
    path = save_graph(tmp_path / "net.onnx", nodes, [1, 8, 14, 14], [1, 8, 14, 14], inits)
    text = relax_module(path)["main"].script()
    assert text.count("R.permute_dims(") + text.count("R.layout_transform(") == 2
    assert "R.clip(" not in text and len(re.findall(r"R\.call_tir\(packed_gemm\d*,", text)) == 2
    _matches_onnxruntime(path, (1, 8, 14, 14))


def _squeeze_excite_concat(path: Path) -> Path:
    """conv 1×1 + ReLU → squeeze-excitation (global pool → 1×1 → sigmoid → channel multiply) →
    concatenated with the input (DenseNet's, a fire module's concat): [1,16,56,56] → [1,48,56,56]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
        helper.make_node("Conv", ["p", "w2", "b2"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["g"]),
        helper.make_node("Mul", ["r1", "g"], ["m"]),
        helper.make_node("Concat", ["m", "x"], ["y"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 32, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b2"),
    ]
    return save_graph(path, nodes, [1, 16, 56, 56], [1, 48, 56, 56], inits)


def test_a_squeeze_excitation_gate_is_computed_once_per_channel_and_multiplied_in_parallel(
    tmp_path: Path,
) -> None:
    path = _squeeze_excite_concat(tmp_path / "se.onnx")
    script = kernel(path, "sigmoid_multiply")
    # The sigmoid (its exp's bit shift) in a block of its own over the 32 channels, not inside the
    # 56×56×32 product's.
    [gate] = [line for line in script.splitlines() if "T.reinterpret(" in line]
    assert "T_multiply" not in gate and gate.strip().startswith("fast_sigmoid_intermediate[")
    assert re.search(r"for \w+ in T\.parallel\(T\.int64\(3136\)\)", script)  # the product's positions
    _matches_onnxruntime(path, (1, 16, 56, 56))


def test_a_concatenation_runs_in_parallel(tmp_path: Path) -> None:
    script = kernel(_squeeze_excite_concat(tmp_path / "se.onnx"), "concatenate")
    assert "T.parallel(" in script


@pytest.mark.parametrize(
    ("channels", "groups", "stride"),
    # RegNet's 8 per group, ResNeXt's 4 (half vectors), 16; 2 per group: merged in pairs
    [(104, 13, 1), (64, 16, 2), (128, 8, 1), (32, 16, 1)],
)
def test_a_grouped_conv_is_a_packed_gemm_per_group(
    tmp_path: Path, channels: int, groups: int, stride: int
) -> None:
    path = conv_net(
        tmp_path / "g.onnx", channels, 14, channels, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
        group=groups, strides=[stride, stride],
    )  # fmt: skip
    text = relax_module(path)["main"].script()
    assert len(re.findall(r"R\.call_tir\(packed_gemm\d*,", text)) == 1 and "R.nn.conv2d" not in text
    _matches_onnxruntime(path, (1, channels, 14, 14))


def test_a_depthwise_conv_is_no_grouped_gemm(tmp_path: Path) -> None:
    path = conv_net(tmp_path / "d.onnx", 32, 14, 32, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=32)
    assert "R.nn.conv2d" in relax_module(path)["main"].script()


def test_groups_of_too_few_outputs_merge_into_block_diagonal_ones() -> None:
    """ResNeXt's 32 groups of 4 under AVX-512 (16 lanes; 8 the narrowest vector it takes): pairs of
    groups become one of 8 inputs and 8 outputs, and compute the same conv."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((3, 3, 4, 128)).astype(np.float32)  # HWIO, 32 groups
    merged, outputs = merge_groups(weights, 4, lanes=16)
    assert merged.shape == (3, 3, 8, 128) and outputs == 8
    x = rng.standard_normal((3, 3, 128)).astype(np.float32)  # one output position's window

    def grouped_conv(w: np.ndarray, per_group: int) -> np.ndarray:
        inputs = w.shape[2]
        groups = [
            (x[..., g * inputs : (g + 1) * inputs], w[..., g * per_group : (g + 1) * per_group])
            for g in range(128 // per_group)
        ]
        return np.concatenate([np.einsum("hwc,hwco->o", data, part) for data, part in groups])

    np.testing.assert_allclose(grouped_conv(merged, 8), grouped_conv(weights, 4), rtol=1e-5)
    assert np.count_nonzero(merged) == weights.size  # the rest are the zeros across merged groups
    assert merge_groups(weights, 4, lanes=8)[1] == 4  # AVX2: 4 fills a half-width vector
    depthwise = rng.standard_normal((3, 3, 1, 32)).astype(np.float32)
    assert merge_groups(depthwise, 1, lanes=16)[1] == 1
