"""The report's numbers: MACs against hand counts, bytes with and without a coding, top-1/agreement
on a constructed case, latency from both engines."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from passes.tiny_models import mlp, random_feeds, residual_net, run, weights_of, with_weights

from edgecam.compiler.errors import ModelImportError
from edgecam.compiler.evaluate import (
    EvalSet,
    Evaluator,
    Latency,
    MeasureOptions,
    RuntimeProcess,
    count_macs,
    model_sizes,
    ort_latency,
    time_calls,
    tvm_latency,
)
from edgecam.compiler.passes import WeightCoding

FAST = MeasureOptions(runs=3, warmup=1, tvm=False)


def test_macs_of_the_tiny_models_equal_hand_counts() -> None:
    # residual_net, outputs [1,8,16,16] = 2048 values: conv1 3·3·3 = 27 MACs each, conv2 (1×1) 8,
    # depthwise 3·3 = 9 (one input channel per group); fc 10 outputs × 8.
    assert count_macs(residual_net()) == 2048 * 27 + 2048 * 8 + 2048 * 9 + 10 * 8 == 90192
    # mlp 64 → 48 → 10: one MAC per weight.
    assert count_macs(mlp()) == 64 * 48 + 48 * 10


def _model(nodes: list[Any], inputs: dict[str, tuple[int, list[Any]]], inits: dict[str, np.ndarray]) -> Any:
    """One graph from nodes; its outputs are the last node's, shapes left to inference."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info(name, elem, shape) for name, (elem, shape) in inputs.items()],
        [helper.make_tensor_value_info(out, 0, None) for out in nodes[-1].output],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _f32(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


def _u8(*shape: int) -> np.ndarray:
    return np.ones(shape, np.uint8)


def _one(x: int = 1) -> np.ndarray:
    return np.asarray(x, np.float32)


def _cases() -> dict[str, tuple[Any, int]]:
    from onnx import TensorProto
    from onnx.helper import make_node as node

    f, u = TensorProto.FLOAT, TensorProto.UINT8
    x_f32, x_u8 = {"x": (f, [1, 4, 8, 8])}, {"x": (u, [1, 1, 5, 5])}
    qlinear = ["x", "s", "z", "w", "s", "z", "s", "z"]
    q_inits = {"w": _u8(2, 1, 3, 3), "s": _one(), "z": np.asarray(0, np.uint8)}
    return {
        # 6 outputs of 8×8, each reading Cin/group = 2 channels × 3×3.
        "grouped conv": (
            _model([node("Conv", ["x", "w"], ["y"], group=2, pads=[1] * 4)], x_f32, {"w": _f32(6, 2, 3, 3)}),
            6 * 64 * 2 * 9,
        ),
        # Every one of the 2·4·4 inputs scatters to Cout 3 × 3×3 outputs (stride 2).
        "conv transpose": (
            _model(
                [node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
                {"x": (f, [1, 2, 4, 4])},
                {"w": _f32(2, 3, 3, 3)},
            ),
            32 * 27,
        ),
        # transA: A is [K=5, M=3]; out [3, 4] × K.
        "gemm transA": (
            _model([node("Gemm", ["a", "b"], ["y"], transA=1)], {"a": (f, [5, 3])}, {"b": _f32(5, 4)}),
            12 * 5,
        ),
        "batched matmul": (
            _model([node("MatMul", ["a", "b"], ["y"])], {"a": (f, [2, 3, 4])}, {"b": _f32(4, 5)}),
            30 * 4,
        ),
        "conv integer": (
            _model(
                [node("ConvInteger", ["x", "w"], ["y"])], {"x": (u, [1, 1, 5, 5])}, {"w": _u8(2, 1, 3, 3)}
            ),
            18 * 9,
        ),
        "matmul integer": (
            _model([node("MatMulInteger", ["a", "b"], ["y"])], {"a": (u, [1, 8])}, {"b": _u8(8, 4)}),
            4 * 8,
        ),
        "qlinear conv": (
            _model([node("QLinearConv", qlinear, ["y"])], x_u8, q_inits),
            18 * 9,
        ),
        # The int8 pass's QDQ form: the Conv's weight is DequantizeLinear's output, not an initializer.
        "dequantized conv": (
            _model(
                [node("DequantizeLinear", ["wq", "s"], ["w"]), node("Conv", ["x", "w"], ["y"])],
                {"x": (f, [1, 1, 6, 6])},
                {"wq": np.ones((4, 1, 3, 3), np.int8), "s": _one()},
            ),
            4 * 16 * 9,
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_macs_of_each_counted_operator(case: str) -> None:
    model, expected = _cases()[case]
    assert count_macs(model) == expected


def test_macs_refuse_unknown_shapes_naming_the_node() -> None:
    from onnx import TensorProto, helper

    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="dense")],
        {"a": (TensorProto.FLOAT, ["batch", 4])},
        {"b": _f32(4, 5)},
    )
    with pytest.raises(ModelImportError, match=r"MatMul node 'dense'.*static shapes"):
        count_macs(model)


def test_bytes_count_coded_initializers_at_their_coded_size() -> None:
    model = mlp()
    weights = weights_of(model)
    plain = model_sizes(model)
    assert plain.params == 64 * 48 + 48 + 48 * 10 + 10
    assert plain.bytes == len(model.SerializeToString())
    assert plain.weight_bytes == sum(w.nbytes for w in weights.values())
    blob = weights["w0"].astype(np.float16).tobytes()  # half the bytes of the float32 tensor
    coding = WeightCoding("float16", {"w0": blob}, lambda b: np.frombuffer(b, np.float16).astype(np.float32))
    coded = model_sizes(model, coding)
    assert coded.params == plain.params
    assert coded.weight_bytes == plain.weight_bytes - weights["w0"].nbytes + len(blob)
    # The serialized model loses w0's data (and its few bytes of field header) and gains the blob.
    saved = plain.bytes - weights["w0"].nbytes + len(blob) - coded.bytes
    assert 0 <= saved <= 8


def test_top1_and_agreement_on_a_constructed_case() -> None:
    model = mlp()
    feeds = random_feeds(model, 20, seed=3)
    predicted = np.asarray([int(np.argmax(run(model, feed)[0])) for feed in feeds])
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % 10  # the model gets exactly 15 of 20 right
    # A bias that makes class 3 win everywhere: agrees with the original where it said 3.
    biased = with_weights(model, {"b1": np.where(np.arange(10) == 3, 1e3, 0.0)})
    with Evaluator(EvalSet(feeds, labels), "x86_64", options=FAST) as evaluator:
        original = evaluator.measure("original", model)
        after = evaluator.measure("biased", biased, changes={"why": "test"})
        assert evaluator.top1(model) == pytest.approx(0.75)
    assert original.top1 == pytest.approx(0.75) and original.agreement == 1.0
    assert original.flops == 2 * original.macs == 2 * (64 * 48 + 48 * 10)
    assert after.top1 == pytest.approx(np.mean(labels == 3))
    assert after.agreement == pytest.approx(np.mean(predicted == 3))
    assert after.agreement < 1.0 and after.changes == {"why": "test"}
    unlabelled = Evaluator(EvalSet(feeds, None), "x86_64", options=FAST)
    assert unlabelled.top1(model) is None and unlabelled.measure("original", model).top1 is None


def test_time_calls_measures_wall_time() -> None:
    p50, p99 = time_calls(lambda: time.sleep(0.002), runs=5, warmup=1)
    assert 2.0 <= p50 <= p99 < 200.0


def test_latency_from_onnxruntime_and_compiled_tvm(tmp_path: Path) -> None:
    options = MeasureOptions(runs=5, warmup=1, threads=2)
    net, dense = residual_net(), mlp()
    results: list[Latency | str] = [ort_latency(net, random_feeds(net, 1)[0], options)]
    with RuntimeProcess(threads=2) as runtime:  # one TVM runtime process times every library
        results.append(tvm_latency(net, random_feeds(net, 1)[0], "x86_64", {}, options, runtime))
        broken = runtime.time(tmp_path / "missing.so", tmp_path / "missing.npz", options)
        # The process survives a failed job; a model without edgecam metadata builds too.
        results.append(tvm_latency(dense, random_feeds(dense, 1)[0], "x86_64", {}, options, runtime))
    assert isinstance(broken, str) and "failed to run the library" in broken
    for latency in results:
        assert isinstance(latency, Latency), latency
        assert 0 < latency.p50_ms <= latency.p99_ms and latency.runs == 5 and latency.threads == 2


@pytest.mark.skipif(platform.machine() == "aarch64", reason="this host runs aarch64 code")
def test_tvm_latency_is_skipped_with_the_reason_when_the_host_cannot_run_the_target() -> None:
    model = residual_net()
    reason = tvm_latency(model, random_feeds(model, 1)[0], "aarch64", {}, FAST)
    assert isinstance(reason, str) and "cannot run aarch64 code" in reason
