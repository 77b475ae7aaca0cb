"""kind: int8 — ONNX Runtime static quantization (QDQ): int8 weights, calibrated uint8 activations.

Numbers are compared in units of the *output step*: the quantization step an 8-bit quantizer of the
fp32 logits would have over the calibration inputs, (max - min) / 255. ONNX Runtime sessions here set
`session.x64quantprecision`: on x86 CPUs without VNNI (this project's machines) its default u8×s8
kernel sums pairs of products in int16 and can saturate; the option keeps the exact int32 sums.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import mlp, random_feeds, residual_net, run

from edgecam.compiler.errors import PassError, RecipeError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config
from edgecam.compiler.passes.quantize import DEFAULT_OPS, QuantizableOp

CALIBRATION_SEED = 7  # the template's calibration feeds: random_feeds(model, 16, seed=7)
WEIGHTS = ("c1_w", "c2_w", "dw_w", "fc_w")  # residual_net's Conv/Gemm weights
RECIPES = Path(__file__).resolve().parents[3] / "models"


def apply(config: dict[str, Any], model: Any, tmp_path: Path, calibration: Any = None) -> PassResult:
    feeds = random_feeds(model, 16, seed=CALIBRATION_SEED) if calibration is None else calibration
    return create_pass(parse_pass_config(config)).apply(model, PassContext(feeds, tmp_path))


def session(model: Any, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    if not optimize:  # run the QDQ graph as written: float ops between Quantize/DequantizeLinear
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def outputs(model: Any, feeds: list[dict[str, np.ndarray]], optimize: bool = True) -> np.ndarray:
    runner = session(model, optimize)
    return np.stack([runner.run(None, feed)[0] for feed in feeds])


def output_step(model: Any) -> float:
    reference = np.stack([run(model, feed)[0] for feed in random_feeds(model, 16, seed=CALIBRATION_SEED)])
    return float(reference.max() - reference.min()) / 255


def producers(model: Any) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def check_quantized_layer(model: Any, node: Any, per_channel: bool) -> None:
    """A layer computed in int8: int8 weight (+ int32 bias) and a Q→DQ activation as its inputs."""
    from onnx import TensorProto, numpy_helper

    made_by, inits = producers(model), initializers(model)
    weight_dq = made_by[node.input[1]]
    assert weight_dq.op_type == "DequantizeLinear", node.name
    weight = inits[weight_dq.input[0]]
    assert weight.data_type == TensorProto.INT8, node.name
    scale = numpy_helper.to_array(inits[weight_dq.input[1]])
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    channels = weight.dims[0] if node.op_type == "Conv" or trans_b else weight.dims[1]  # output channels
    assert scale.shape == ((channels,) if per_channel else ()), node.name
    activation_dq = made_by[node.input[0]]
    assert activation_dq.op_type == "DequantizeLinear", node.name
    assert made_by[activation_dq.input[0]].op_type == "QuantizeLinear", node.name
    if len(node.input) > 2:
        bias_dq = made_by[node.input[2]]
        assert inits[bias_dq.input[0]].data_type == TensorProto.INT32, node.name


class TestInt8Residual(PassContract):
    """Conv (BN folded in by ORT's pre-processing), residual Add, depthwise Conv, pooling, Gemm."""

    config: ClassVar[dict[str, Any]] = {"kind": "int8"}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "int8", "calibrate_method": "kl"},
        {"kind": "int8", "percentile": 80.0},
        {"kind": "int8", "op_types": ["Conv2d"]},
        {"kind": "int8", "op_types": []},
        {"kind": "int8", "max_calibration": 0},
        {"kind": "int8", "activation_type": "int4"},
        {"kind": "int8", "per_chanel": True},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        from onnx import TensorProto

        layers = [node for node in after.graph.node if node.op_type in ("Conv", "Gemm")]
        assert len(layers) == 4  # conv1 (with BN folded in), conv2, dwconv, fc
        for node in layers:
            check_quantized_layer(after, node, per_channel=True)
        float_weights = [
            init.name for init in after.graph.initializer if init.data_type == TensorProto.FLOAT and init.dims
        ]
        assert not [name for name in float_weights if name.endswith("_w")], "a float weight is left"
        assert {"conv1", "conv2", "dwconv", "fc", "add"} <= set(result.changes["quantized_nodes"])
        assert len(result.changes["int8_weights"]) == 4
        assert result.changes["calibration_inputs"] == 16
        sizes = {
            name: int(np.prod(initializers(after)[name].dims)) for name in result.changes["int8_weights"]
        }
        assert sorted(sizes.values()) == sorted(int(np.prod(initializers(before)[w].dims)) for w in WEIGHTS)
        # The logits leave the graph in float: the last Gemm writes them itself.
        assert producers(after)["logits"].op_type == "Gemm"
        assert after.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        step = output_step(before)
        quantize_points = sum(node.op_type == "QuantizeLinear" for node in after.graph.node)
        # Each quantization point rounds its tensor to half of its own step; carried to the logits that
        # is about one output step per point at most (measured here: under 5 steps for 6 points).
        tolerance = quantize_points * step
        reference = np.stack([run(before, feed)[0] for feed in feeds])
        np.testing.assert_allclose(outputs(after, feeds), reference, rtol=0, atol=tolerance)
        wider = random_feeds(before, 200, seed=12)
        agree = outputs(after, wider).argmax(-1) == np.stack([run(before, f)[0] for f in wider]).argmax(-1)
        assert agree.mean() >= 0.95


class TestInt8MlpPerTensor(PassContract):
    """MatMul + Add layers (fused to Gemm by pre-processing), one weight scale per tensor."""

    config: ClassVar[dict[str, Any]] = {
        "kind": "int8",
        "per_channel": False,
        "calibrate_method": "percentile",
    }

    def build_model(self) -> Any:
        return mlp()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        layers = [node for node in after.graph.node if node.op_type in ("Gemm", "MatMul")]
        assert len(layers) == 2
        for node in layers:
            check_quantized_layer(after, node, per_channel=False)
        assert result.changes["calibrate_method"] == "percentile"

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        step = output_step(before)
        quantize_points = sum(node.op_type == "QuantizeLinear" for node in after.graph.node)
        # Percentile ranges clip the rarest values on purpose; allow two steps per quantization point.
        reference = np.stack([run(before, feed)[0] for feed in feeds])
        np.testing.assert_allclose(outputs(after, feeds), reference, rtol=0, atol=2 * quantize_points * step)


def test_int8_kernels_compute_the_qdq_math(tmp_path: Path) -> None:
    """ONNX Runtime fuses DQ→Conv→Q into QLinearConv (int8 in, int32 sums) and gets the QDQ graph's
    float semantics: the two agree far below one output step."""
    import onnx
    import onnxruntime as ort

    model = residual_net()
    quantized = apply({"kind": "int8"}, model, tmp_path).model
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= fused and "Conv" not in fused
    feeds = random_feeds(model, 8, seed=3)
    int8 = outputs(quantized, feeds)
    np.testing.assert_allclose(
        int8, outputs(quantized, feeds, optimize=False), atol=0.05 * output_step(model)
    )


def test_missing_calibration_asks_for_it(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="add `calibration:`"):
        apply({"kind": "int8"}, residual_net(), tmp_path, calibration=[])


def test_max_calibration_caps_the_inputs_used(tmp_path: Path) -> None:
    result = apply({"kind": "int8", "max_calibration": 5}, residual_net(), tmp_path)
    assert result.changes["calibration_inputs"] == 5


def test_excluded_and_unlisted_layers_stay_float(tmp_path: Path) -> None:
    from onnx import TensorProto

    model = residual_net()
    result = apply({"kind": "int8", "exclude": ["dwconv"], "op_types": ["Conv"]}, model, tmp_path)
    nodes = {node.name: node for node in result.model.graph.node}
    inits = initializers(result.model)
    for name, weight in (("dwconv", "dw_w"), ("fc", "fc_w")):  # excluded; Gemm not in op_types
        assert nodes[name].input[1] == weight and inits[weight].data_type == TensorProto.FLOAT
    check_quantized_layer(result.model, nodes["conv2"], per_channel=True)
    assert result.changes["excluded_nodes"] == ["dwconv"]
    assert "fc" not in result.changes["quantized_nodes"]


@pytest.mark.parametrize("per_channel", [True, False])
def test_reduce_range_gives_7_bit_weights_to_the_layers_dot_steps_compute(
    tmp_path: Path, per_channel: bool
) -> None:
    """7-bit weights let x86 CPUs without VNNI add u8×s8 pairs in int16; a depthwise conv takes no such
    step (compiler/lowering/packed_gemm.py: groups 1 only), so it keeps its 8-bit weights."""
    from onnx import numpy_helper

    config = {"kind": "int8", "reduce_range": True, "per_channel": per_channel}
    result = apply(config, residual_net(), tmp_path)
    inits, made_by = initializers(result.model), producers(result.model)
    largest = {}
    for node in result.model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            codes = numpy_helper.to_array(inits[made_by[node.input[1]].input[0]])
            largest[node.name] = int(np.abs(codes.astype(int)).max())
    assert largest == {"conv1": 64, "conv2": 64, "dwconv": 127, "fc": 64}


def test_an_exclude_pattern_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PassError, match=r"'conv9'.*conv1"):
        apply({"kind": "int8", "exclude": ["conv9"]}, residual_net(), tmp_path)


def test_metadata_survives(tmp_path: Path) -> None:
    import onnx

    model = residual_net()
    onnx.helper.set_model_props(model, {"edgecam.model_name": "tiny", "edgecam.labels": '["a"]'})
    result = apply({"kind": "int8"}, model, tmp_path)
    assert {p.key: p.value for p in result.model.metadata_props} == {
        "edgecam.model_name": "tiny",
        "edgecam.labels": '["a"]',
    }


def test_bias_correction_removes_the_weight_rounding_shift(tmp_path: Path) -> None:
    """One dense layer on inputs with mean 2: rounding W shifts each output's mean by ΔW·E[x]. With the
    correction, what is left of the mean error is input rounding, far below that shift."""
    model = mlp(seed=3, sizes=(64, 10))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(2.0, 1.0, (1, 64)).astype(np.float32)} for _ in range(64)]
    reference = np.stack([run(model, feed)[0] for feed in feeds])
    mean_error = {}
    for corrected in (False, True):
        config = {"kind": "int8", "bias_correction": corrected}
        result = apply(config, model, tmp_path / str(corrected), calibration=feeds)
        mean_error[corrected] = np.abs((outputs(result.model, feeds) - reference).mean(axis=0)).max()
    assert mean_error[True] < mean_error[False] / 4
    assert result.changes["bias_correction"]["max_abs_shift"]


def test_op_type_choices_are_what_onnxruntime_quantizes() -> None:
    from typing import get_args

    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    assert set(get_args(QuantizableOp)) <= set(QDQRegistry) | set(QLinearOpsRegistry)
    assert set(DEFAULT_OPS) <= set(get_args(QuantizableOp))


def test_bundled_cnn_keeps_its_accuracy(tmp_path: Path) -> None:
    """The fashion_cnn int8 recipe's pass on real images: calibrated on 64 test images, evaluated on
    400 others; top-1 may drop at most 1 point (the recipe's gate)."""
    from edgecam.compiler.recipe import load_recipe
    from edgecam.models import fashion_cnn
    from edgecam.preprocessing import Preprocessing, preprocess

    recipe, _ = load_recipe(RECIPES / "fashion_cnn" / "recipes" / "int8.yaml")
    import onnx

    model = onnx.load(str(fashion_cnn.onnx_path()))
    spec = Preprocessing.model_validate_json(
        {p.key: p.value for p in model.metadata_props}["edgecam.preprocessing"]
    )
    images, labels = fashion_cnn.load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images]
    result = create_pass(recipe.passes[0]).apply(model, PassContext(feeds[600:664], tmp_path))
    top1 = {
        name: float((outputs(m, feeds[:400]).reshape(400, -1).argmax(1) == labels[:400]).mean())
        for name, m in (("fp32", model), ("int8", result.model))
    }
    assert top1["int8"] >= top1["fp32"] - 0.01, top1
