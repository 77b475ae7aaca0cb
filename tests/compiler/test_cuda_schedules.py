"""edgecam's CUDA schedule rule and options, checked on the lowered kernels (no GPU needed; the GPU run
in bench/bench_cuda.py checks the numbers against ONNX Runtime)."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecam.compiler.targets.base import create_target
from edgecam.compiler.targets.cuda_schedules import (
    MAX_BLOCK_PER_OUTPUT,
    MAX_SERIAL_REDUCTION,
    MIN_SHARED_REDUCTION,
    THREADS_PER_BLOCK,
)

CHANNELS, SIZE = 8, 20


def _model(depthwise: bool, layers: int = 1) -> onnx.ModelProto:
    """`layers` × (3×3 conv + bias + ReLU6): depthwise (a 9-step reduction) or full (CHANNELS × 9)."""
    rng = np.random.default_rng(0)
    group = CHANNELS if depthwise else 1
    weight = rng.standard_normal((CHANNELS, CHANNELS // group, 3, 3)).astype(np.float32)
    names = ["x", *(f"y{i}" for i in range(1, layers)), "y"]
    nodes = []
    for source, result in itertools.pairwise(names):
        conv = helper.make_node("Conv", [source, "w", "b"], [result + "c"], group=group, pads=[1, 1, 1, 1])
        nodes += [conv, helper.make_node("Clip", [result + "c", "lo", "hi"], [result])]
    init = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _pointwise(channels_in: int, channels_out: int, size: int) -> onnx.ModelProto:
    """A 1×1 conv + bias: channels_out × size² outputs, each a channels_in-long reduction."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels_out, channels_in, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels_in, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels_out, size, size])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(rng.standard_normal(channels_out).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _lowered(model: onnx.ModelProto, **options: Any) -> Any:
    """The module after the CUDA target's pipeline (scheduled kernels; nothing compiled)."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    target = create_target("cuda", arch="sm_87", **options)
    tvm_target = target.tvm_target()
    config = {"relax.backend.use_cuda_graph": target.options.cuda_graph}
    with tvm.transform.PassContext(config=config), tvm_target:
        return target.pipeline(tvm_target)(from_onnx(model, keep_params_in_input=False))


def _conv_kernel(module: Any) -> str:
    [script] = [f.script() for gv, f in module.functions.items() if "conv2d" in gv.name_hint]
    return script


def _bindings(script: str) -> dict[str, int]:
    found = re.findall(r'thread_binding\(T\.int64\((\d+)\), thread="(\w+\.\w)"\)', script)
    return {axis: int(extent) for extent, axis in found}


def test_a_depthwise_conv_gets_one_thread_per_output_element() -> None:
    script = _conv_kernel(_lowered(_model(depthwise=True)))
    outputs = CHANNELS * SIZE * SIZE
    assert _bindings(script) == {"blockIdx.x": math.ceil(outputs / THREADS_PER_BLOCK), "threadIdx.x": 256}
    # The 3×3 window is a serial loop in the thread, accumulated in a register, and the bias and ReLU6
    # are applied by the same thread before the one store of the element.
    assert "T.grid(T.int64(3), T.int64(3))" in script
    assert 'scope="local"' in script
    assert script.count("T.thread_binding") == 2


def test_a_long_reduction_is_left_to_tvms_rules() -> None:
    assert CHANNELS * 9 > MAX_SERIAL_REDUCTION
    script = _conv_kernel(_lowered(_model(depthwise=False)))
    # DLight's Matmul rule takes a full conv: tiled (blockIdx.y, vthreads), not one thread per element.
    bindings = _bindings(script)
    assert "blockIdx.y" in bindings or "vthread.y" in bindings, bindings


def test_few_outputs_with_a_long_reduction_get_a_block_each() -> None:
    # MobileNetV2's 960 → 160 1×1 conv on a 7×7 map: 7840 outputs, 960-long reductions.
    assert MAX_BLOCK_PER_OUTPUT >= 160 * 49 and MIN_SHARED_REDUCTION <= 960
    bindings = _bindings(_conv_kernel(_lowered(_pointwise(960, 160, 7))))
    assert bindings == {"blockIdx.x": 160 * 49, "threadIdx.x": THREADS_PER_BLOCK}


def test_many_outputs_stay_with_the_matmul_tiles() -> None:
    # The same conv on a 28×28 map has 125440 outputs: enough tiles to fill the GPU.
    assert MAX_BLOCK_PER_OUTPUT < 160 * 28 * 28
    bindings = _bindings(_conv_kernel(_lowered(_pointwise(960, 160, 28))))
    assert "blockIdx.y" in bindings or "vthread.y" in bindings, bindings


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_graph_option_records_the_launches(cuda_graph: bool) -> None:
    # The first kernel reads the caller's input and the last writes the returned tensor; TVM records
    # the launches between them, whose buffers it planned itself.
    text = _lowered(_model(depthwise=True, layers=4), cuda_graph=cuda_graph).script()
    assert ("vm.builtin.cuda_graph.run_or_capture" in text) is cuda_graph
