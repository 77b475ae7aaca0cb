"""edgecam's untuned CPU schedule (ParallelRows): which kernels it takes, what it does to their loops,
and that the built library still computes what ONNX Runtime does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecam.compiler.targets.base import create_target
from edgecam.compiler.targets.cpu_schedules import MIN_ROW


def _conv(path: Path, channels: int, size: int, depthwise: bool) -> Path:
    """3×3 conv (pad 1) + bias + ReLU on a channels × size × size input."""
    rng = np.random.default_rng(0)
    group = channels if depthwise else 1
    weight = rng.standard_normal((channels, channels // group, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], group=group, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _x86() -> Any:
    return create_target("x86_64", mcpu="x86-64-v3")


def _conv_kernel(path: Path) -> str:
    from tvm.relax.frontend.onnx import from_onnx

    target = _x86()
    tvm_target = target.tvm_target()
    with tvm_target:
        module = target.pipeline(tvm_target)(from_onnx(onnx.load(str(path)), keep_params_in_input=False))
    [script] = [f.script() for gv, f in module.functions.items() if "conv2d" in gv.name_hint]
    return str(script)


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_conv_runs_rows_in_parallel_with_the_row_innermost(tmp_path: Path, depthwise: bool) -> None:
    channels, size = 8, 16
    script = _conv_kernel(_conv(tmp_path / "conv.onnx", channels, size, depthwise))
    body = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # One loop at the top: batch × channel × output row, shared out over the thread pool ...
    top_loops = [line for line in body if line.startswith("    for ")]
    assert top_loops == [f"    for ax0_ax1_fused in T.parallel(T.int64({channels * size})):"]
    # ... inside it the reduction (input channels for a full conv, the 3×3 window), then the row's
    # 16 outputs innermost, where LLVM vectorizes; the ReLU runs in the same parallel iteration.
    window = ("" if depthwise else f"T.int64({channels}), ") + "T.int64(3), T.int64(3), "
    assert f"T.grid({window}T.int64({size})):" in script
    assert re.search(r"\n        for \w+ in range\(T\.int64\(16\)\):\n\s+with T\.sblock\(\"compute", script)


def test_a_kernel_with_short_rows_is_left_alone(tmp_path: Path) -> None:
    script = _conv_kernel(_conv(tmp_path / "conv.onnx", 8, MIN_ROW - 1, depthwise=False))
    assert "T.parallel(" not in script


@pytest.mark.parametrize("depthwise", [False, True])
def test_the_scheduled_library_matches_onnxruntime(tmp_path: Path, depthwise: bool) -> None:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    path = _conv(tmp_path / "conv.onnx", 16, 20, depthwise)
    x = np.random.default_rng(1).standard_normal((1, 16, 20, 20)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    executable = _x86().build(from_onnx(onnx.load(str(path)), keep_params_in_input=False))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
