"""A channels-last conv's output rows and columns as one axis of positions (compiler/targets/
cpu_positions.py; pointwise convs take the packed GEMM path instead, test_packed_gemm.py): what the
scheduled kernel looks like, and that the built library computes what ONNX Runtime does, epilogues
(bias, ReLU6, residual add) included."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from convnets import conv_net, save_graph
from onnx import helper, numpy_helper
from x86_kernels import build, kernel


def _net(
    path: Path,
    channels: int,
    size: int,
    outputs: int,
    kernel: int = 3,
    epilogue: str = "relu6",
    stride: int = 1,
) -> Path:
    """A k×k conv (pad k//2, `stride`) with `epilogue` (convnets.conv_net)."""
    conv = {"kernel_shape": [kernel] * 2, "pads": [kernel // 2] * 4, "strides": [stride] * 2}
    return conv_net(path, channels, size, outputs, epilogue, **conv)


def _kernel(path: Path) -> str:
    # Channels-last alone: prepared, these float convs would be packed GEMMs (test_packed_gemm.py);
    # RegisterTiles schedules the convs those do not take, such as int8 ones on CPUs without VNNI.
    return kernel(path, "conv2d", start="channels_last")


def test_a_full_conv_on_a_7x7_map_tiles_positions_across_rows(tmp_path: Path) -> None:
    # One row offers tiles of 1 or 7 positions; 7 × 2 vectors overflow AVX2's registers. As one axis
    # of 49, the tile is 7 positions × 1 vector (49 = 7 × 7 still), and the buffer between the conv
    # and its epilogue holds the positions as one axis.
    script = _kernel(_net(tmp_path / "m.onnx", 32, 7, 64))
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(49), T.int64(64)))" in script
    assert re.search(r"in T\.unroll\(T\.int64\(7\)\):\n\s+for \w+ in T\.unroll\(T\.int64\(1\)\):", script)


def test_a_full_conv_on_a_14x14_map_takes_4_positions_of_3_vectors(tmp_path: Path) -> None:
    script = _kernel(_net(tmp_path / "m.onnx", 16, 14, 96))
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(196), T.int64(96)))" in script
    assert re.search(r"in T\.unroll\(T\.int64\(4\)\):\n\s+for \w+ in T\.unroll\(T\.int64\(3\)\):", script)
    assert "T.where" not in script  # 196 = 49 tiles of 4


def test_a_depthwise_conv_keeps_its_rows(tmp_path: Path) -> None:
    # Its input depends on the channels too: a tile is a run of one output row, as before.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=32, pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "dw.onnx", nodes, [1, 32, 14, 14], [1, 32, 14, 14], inits)
    script = _kernel(path)
    assert "T.int64(196)" not in script


@pytest.mark.parametrize(
    ("channels", "size", "outputs", "kernel", "epilogue", "stride"),
    [
        (16, 7, 32, 3, "relu6", 1),  # bias + ReLU6
        (32, 7, 32, 3, "residual", 1),  # the epilogue reads a second input
        (16, 7, 24, 3, "none", 1),  # no epilogue: the conv's own write-back
        (16, 14, 96, 3, "relu6", 1),
        (32, 14, 64, 1, "relu6", 2),  # a strided 1×1 conv (not a packed GEMM)
    ],
)
def test_the_library_matches_onnxruntime(
    tmp_path: Path, channels: int, size: int, outputs: int, kernel: int, epilogue: str, stride: int
) -> None:
    import tvm
    from tvm import relax

    path = _net(tmp_path / "m.onnx", channels, size, outputs, kernel, epilogue, stride)
    out = (size - 1) // stride + 1
    assert f"T.int64({out * out})" in _kernel(path)  # rows and columns are one axis of positions
    x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = build(path, start="channels_last")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
