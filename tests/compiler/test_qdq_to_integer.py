"""QDQ → integer Relax rewrite (compiler/lowering/qdq_to_integer.py): structure and numbers.

Models are quantized in code with onnxruntime.quantization.quantize_static (per-channel int8 weights)
or written as QDQ graphs by hand. The reference is ONNX Runtime on the same QDQ model with edgecam's
session options (`session.x64quantprecision`: exact int32 sums on CPUs without VNNI); results are
compared in units of the output's quantization step.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from convnets import build_convnet, save_graph

from edgecam.compiler.lowering.qdq_to_integer import (
    LAYER_OPS,
    Folding,
    _bindings,
    _op_name,
    fold_qdq,
    has_qdq,
)

Feeds = dict[str, np.ndarray]


class _Reader:
    """An onnxruntime CalibrationDataReader over in-memory feeds."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def image_feeds(count: int, seed: int, shape: Sequence[int] = (1, 1, 28, 28)) -> list[Feeds]:
    """The convnet's inputs: pixels normalized with mean 0.5, std 0.5, so values in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-1, 1, size=shape).astype(np.float32)} for _ in range(count)]


def quantized_convnet(tmp_path: Path, activations: str = "uint8", weights: str = "int8") -> Path:
    """build_convnet (Conv 3x3 pad 1 → Relu → MaxPool → Flatten → Gemm) through quantize_static."""
    source = build_convnet(tmp_path / "fp32.onnx")
    target = tmp_path / f"qdq-{activations}-{weights}.onnx"
    return qdq(source, target, image_feeds(16, seed=1), activations, weights)


def qdq(
    source: Path,
    target: Path,
    calibration: Sequence[Feeds],
    activations: str = "uint8",
    weights: str = "int8",
    reduce_range: bool = False,
) -> Path:
    """`source` through quantize_static (QDQ, per-channel weights, 7-bit with `reduce_range`),
    calibrated on `calibration`, saved as `target`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        str(source),
        str(target),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=types[activations],
        weight_type=types[weights],
        reduce_range=reduce_range,
    )
    return target


def qdq_conv_activation(tmp_path: Path, activation: str) -> Path:
    """Hand-written QDQ: Q(x) → DQ → Conv (per-channel int8 W, int32 bias) → Relu|Clip(0, 6) → Q → DQ."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, size=(8, 3, 3, 3)).astype(np.int8)
    w_scale = rng.uniform(0.002, 0.01, size=8).astype(np.float32)
    x_scale = np.float32(2 / 255)
    inits = [
        numpy_helper.from_array(x_scale, "x_s"),
        numpy_helper.from_array(np.uint8(128), "x_z"),  # input in [-1, 1]: zero point mid-range
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(w_scale, "w_s"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_z"),
        numpy_helper.from_array(rng.integers(-500, 500, size=8).astype(np.int32), "b_q"),
        numpy_helper.from_array((x_scale * w_scale).astype(np.float32), "b_s"),
        numpy_helper.from_array(np.zeros(8, np.int32), "b_z"),
        numpy_helper.from_array(np.float32(0.02), "y_s"),
        numpy_helper.from_array(np.uint8(20), "y_z"),  # a zero point ≠ 0 makes Relu/Clip visible
        numpy_helper.from_array(np.float32(0.0), "lo"),
        numpy_helper.from_array(np.float32(3.0), "hi"),
    ]
    act = (
        helper.make_node("Relu", ["c"], ["a"])
        if activation == "relu"
        else helper.make_node("Clip", ["c", "lo", "hi"], ["a"])
    )
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_f"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b_f"], axis=0),
        helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        act,
        helper.make_node("QuantizeLinear", ["a", "y_s", "y_z"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / f"qdq-conv-{activation}.onnx"
    onnx.save(model, str(path))
    return path


def relax_module(path: Path) -> Any:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), keep_params_in_input=False)


def layer_calls(mod: Any) -> list[Any]:
    """Every conv/matmul call in the module's Relax functions."""
    from tvm import relax

    calls = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                for binding in block.bindings:
                    op = getattr(binding.value, "op", None)
                    if getattr(op, "name", None) in LAYER_OPS:
                        calls.append(binding.value)
    return calls


def run_tvm(mod: Any, feeds: Sequence[Feeds]) -> np.ndarray:
    """Build with the x86_64 target's pipeline (without its own prepare) and run every feed."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from edgecam.compiler.targets import create_target

    builder = create_target("x86_64")
    target = builder.tvm_target()
    with target:
        executable = tvm.compile(mod, target=target, relax_pipeline=builder.pipeline(target))
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "model.so"
        executable.export_library(str(library))
        vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        return np.stack([vm["main"](*(tvm.runtime.tensor(v) for v in f.values())).numpy() for f in feeds])


def run_ort(path: Path, feeds: Sequence[Feeds]) -> np.ndarray:
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, f)[0] for f in feeds])


def output_step(path: Path) -> float:
    """The scale of the DequantizeLinear that writes the graph's (first) output."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    output = model.graph.output[0].name
    (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == output]
    return float(inits[dq.input[1]])


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_conv_and_gemm_become_integer_layers(tmp_path: Path, activations: str) -> None:
    model = quantized_convnet(tmp_path, activations)
    imported = relax_module(model)
    assert has_qdq(imported)
    assert {str(c.ty.dtype) for c in layer_calls(imported)} == {"float32"}  # what TVM imports

    folded, folding = fold_qdq(imported)

    calls = layer_calls(folded)
    assert sorted(c.op.name for c in calls) == ["relax.matmul", "relax.nn.conv2d"]
    for call in calls:
        assert str(call.ty.dtype) == "int32"
        assert [str(arg.ty.dtype) for arg in call.args] == [activations, "int8"]
    assert folding.folded == {"conv2d": 1, "matmul": 1}
    assert folding.requantized == 2 and folding.biases == 2 and folding.left == {}
    assert folding.elided == 2  # MaxPool and Flatten run on the 8-bit tensor, without Q/DQ around them


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_integer_build_matches_onnxruntime_within_one_step(tmp_path: Path, activations: str) -> None:
    model = quantized_convnet(tmp_path, activations)
    folded, _ = fold_qdq(relax_module(model))
    feeds = image_feeds(16, seed=2)

    difference = np.abs(run_tvm(folded, feeds) - run_ort(model, feeds)) / output_step(model)

    assert difference.max() <= 1.0 + 1e-4
    assert np.mean(difference > 0.5) < 0.05  # off by a step only at rare rounding ties


@pytest.mark.parametrize(("activation", "requantized"), [("relu", 1), ("clip", 0)])
def test_activation_between_conv_and_quantize(tmp_path: Path, activation: str, requantized: int) -> None:
    """Relu folds into the requantize's clip; ONNX Clip (imported as TE maximum/minimum) stays a float
    epilogue after the integer conv."""
    model = qdq_conv_activation(tmp_path, activation)
    folded, folding = fold_qdq(relax_module(model))
    assert folding.folded == {"conv2d": 1} and folding.biases == 1 and folding.left == {}
    assert folding.requantized == requantized
    assert [str(c.ty.dtype) for c in layer_calls(folded)] == ["int32"]
    ops = {(_op_name(b.value), str(b.value.ty.dtype)) for _, b in _bindings(folded)}
    assert ("relax.subtract", "int32") not in ops  # the zero-point correction joined the bias constant
    if requantized:  # zero point and clamp in int32, where LLVM clamps with its saturating packs
        assert {("relax.maximum", "int32"), ("relax.minimum", "int32")} <= ops
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.uniform(-1.2, 1.2, size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]

    got, expected = run_tvm(folded, feeds), run_ort(model, feeds)

    assert np.abs(got - expected).max() <= 0.02 * (1 + 1e-4)  # y_s: one output step
    assert got.min() >= 0.0 and (activation == "relu" or got.max() <= 3.0 + 1e-6)


def residual_block(path: Path, channels: int = 16, size: int = 8) -> Path:
    """Conv → Conv → Add (the first conv's output back) → Conv, all 1×1 with biases: an Add between
    layers, as in an inverted residual block."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(6)
    inits = [
        numpy_helper.from_array((rng.standard_normal((channels, channels, 1, 1)) * 0.3).astype(np.float32), w)
        for w in ("w0", "w1", "w2")
    ] + [
        numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), b)
        for b in ("b0", "b1", "b2")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"]),
        helper.make_node("Conv", ["a", "w1", "b1"], ["c"]),
        helper.make_node("Add", ["c", "a"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"]),
    ]
    shape = [1, channels, size, size]
    return save_graph(path, nodes, shape, shape, inits)


def test_residual_add_stays_channels_last(tmp_path: Path) -> None:
    """quantize(dequantize(a) + dequantize(b)) becomes elementwise ops, which the x86 target's layout
    rewrite moves to NHWC with the convs: the model transposes only its input and output."""
    from edgecam.compiler.targets import create_target

    rng = np.random.default_rng(7)
    feeds = [{"x": rng.uniform(-1, 1, size=(1, 16, 8, 8)).astype(np.float32)} for _ in range(8)]
    model = qdq(residual_block(tmp_path / "block.onnx"), tmp_path / "block-qdq.onnx", feeds)
    _, folding = fold_qdq(relax_module(model))
    assert folding.adds == 1 and folding.folded == {"conv2d": 3}

    prepared = create_target("x86_64").prepare(relax_module(model))

    ops = [_op_name(binding.value) for _, binding in _bindings(prepared)]
    assert ops.count("relax.permute_dims") == 2, ops  # NCHW → NHWC after the input, back at the output
    assert "relax.add" in ops and ops.count("relax.quantize") == 1  # only the model input's
    difference = np.abs(run_tvm(prepared, feeds) - run_ort(model, feeds)) / output_step(model)
    assert difference.max() <= 1.0 + 1e-4


def test_layers_it_cannot_fold_stay_float_and_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = quantized_convnet(tmp_path, "uint8", weights="uint8")  # asymmetric weights: zero point ≠ 0
    with caplog.at_level(logging.WARNING, logger="edgecam.compiler.lowering.qdq_to_integer"):
        folded, folding = fold_qdq(relax_module(model))
    assert folding.folded == {}
    assert len(folding.left) == 2
    assert all("not int8" in why for why in folding.left.values()), folding.left
    assert "2 left in float32" in caplog.text
    assert {str(c.ty.dtype) for c in layer_calls(folded)} == {"float32"}
    feeds = image_feeds(4, seed=5)
    np.testing.assert_allclose(
        run_tvm(folded, feeds), run_ort(model, feeds), atol=output_step(model) * 1.0001
    )


def test_float_models_pass_through_untouched(tmp_path: Path) -> None:
    from edgecam.compiler.targets import create_target

    imported = relax_module(build_convnet(tmp_path / "fp32.onnx"))
    assert not has_qdq(imported)
    assert create_target("cuda").prepare(imported).same_as(imported)
    prepared = create_target("x86_64").prepare(imported)  # channels-last, still in float
    assert [str(c.ty.dtype) for c in layer_calls(prepared)] == ["float32", "float32"]
    folded, folding = fold_qdq(imported)
    assert folding == Folding()
    assert [str(c.ty.dtype) for c in layer_calls(folded)] == ["float32", "float32"]


@pytest.mark.parametrize(
    ("target", "options", "layers"),
    [("x86_64", {}, {"int32"}), ("aarch64", {"mcpu": "cortex-a55"}, {"int32"}), ("cuda", {}, {"float32"})],
)
def test_targets_opt_in_to_integer_layers(
    tmp_path: Path, target: str, options: dict[str, str], layers: set[str]
) -> None:
    """CPU targets build QDQ layers in integers; CUDA keeps them float32 (no int8 GPU schedules yet)."""
    from edgecam.compiler.targets import create_target

    prepared = create_target(target, **options).prepare(relax_module(quantized_convnet(tmp_path)))
    assert {str(c.ty.dtype) for c in layer_calls(prepared)} == layers


@pytest.mark.slow
def test_bundled_cnn_int8_keeps_its_top1_agreement_with_fp32(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The recipe's int8 pass on the bundled CNN, compiled by compile_model (integer layers), against
    fp32 ONNX Runtime on the first 500 Fashion-MNIST test images (calibrated on the 256 after them)."""
    import onnx

    from edgecam.compiler.build import compile_model
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
    from edgecam.compiler.verify import run_library, run_onnxruntime
    from edgecam.models.fashion_cnn import load_samples, onnx_path
    from edgecam.preprocessing import preprocess

    spec = load_onnx(onnx_path()).preprocessing
    images, _ = load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images[:756]]
    quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(
        onnx.load(str(onnx_path())), PassContext(feeds[500:], tmp_path / "work")
    )
    onnx.save(quantized.model, str(tmp_path / "int8.onnx"))
    with caplog.at_level(logging.INFO, logger="edgecam.compiler.lowering.qdq_to_integer"):
        artifact = compile_model(tmp_path / "int8.onnx", "x86_64", tmp_path / "art")
    assert "5 conv2d, 1 matmul in integers" in caplog.text
    evaluated = feeds[:500]
    int8 = np.stack([out[0] for out in run_library(artifact.library_path, evaluated, ["image"])])
    fp32 = np.stack([out[0] for out in run_onnxruntime(onnx_path(), evaluated)])

    agreement = np.mean(int8.argmax(-1) == fp32.argmax(-1))

    assert agreement >= 0.99
