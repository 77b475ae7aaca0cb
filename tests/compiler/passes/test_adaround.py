"""kind: int8 with `weight_rounding: adaround` (compiler/passes/adaround.py): each int8 weight rounded up
or down to minimise its layer's output error on the calibration inputs, scales left as ORT chose them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from test_quantize import check_quantized_layer, initializers, outputs, producers
from tiny_models import residual_net, run

from edgecam.compiler.errors import RecipeError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config

ADAROUND = {"kind": "int8", "weight_rounding": "adaround", "adaround_iterations": 300}


def conv_net(seed: int = 0) -> Any:
    """image [1,4,10,10] → Conv3x3 (8 filters, padded) → y: one layer, its output read in float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((8, 4, 3, 3)) * 0.3, "b": rng.standard_normal(8) * 0.1}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def grid_feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Smooth images (neighbouring pixels and channels correlated, as in photos) on the 8-bit grid of
    [0, 1], both ends present: the uint8 input quantizer (scale 1/255) is then exact, so what is left
    of the layer's error is the rounding of its weights. With independent pixels nearest rounding would
    already be optimal (plus bias correction): adaptive rounding gains from the correlations."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        coarse = rng.random((1, 1, 4, 4)) + 0.3 * rng.random((1, 4, 4, 4))
        rows = np.interp(np.linspace(0, 3, 10), np.arange(4), np.arange(4))  # bilinear up-sampling
        low, frac = np.minimum(rows.astype(int), 2), rows - np.minimum(rows.astype(int), 2)
        image = coarse[..., low, :] * (1 - frac)[:, None] + coarse[..., low + 1, :] * frac[:, None]
        image = image[..., low] * (1 - frac) + image[..., low + 1] * frac
        image = np.round((image - image.min()) / (image.max() - image.min()) * 255) / 255
        feeds.append({"image": image.astype(np.float32)})
    return feeds


def apply(
    config: dict[str, Any],
    model: Any,
    feeds: list[dict[str, np.ndarray]],
    tmp: Path,
    progress: Callable[[str], None] = lambda message: None,
) -> PassResult:
    return create_pass(parse_pass_config(config)).apply(model, PassContext(feeds, tmp, progress=progress))


def weight_scales(model: Any) -> dict[str, np.ndarray]:
    """Scale of every DequantizeLinear (weights, biases, activations), by the tensor it dequantizes."""
    from onnx import numpy_helper

    inits = initializers(model)
    return {
        node.input[0]: numpy_helper.to_array(inits[node.input[1]])
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
    }


def test_adaround_lowers_the_layer_error_of_nearest_rounding(tmp_path: Path) -> None:
    model = conv_net()
    calibration, held_out = grid_feeds(32, seed=1), grid_feeds(32, seed=2)
    error = {}
    results = {}
    shown: list[str] = []
    for rounding in ("nearest", "adaround"):
        config = {**ADAROUND, "weight_rounding": rounding}
        results[rounding] = apply(config, model, calibration, tmp_path / rounding, shown.append).model
        reference = np.stack([run(model, feed)[0] for feed in held_out])
        # Graph as written (float-simulated int8): the error is the QDQ arithmetic, kernels aside.
        error[rounding] = float(
            np.mean((outputs(results[rounding], held_out, optimize=False) - reference) ** 2)
        )
    # Measured: 0.71x the mean squared error, on images the rounding was not chosen on.
    assert error["adaround"] < 0.8 * error["nearest"], error
    assert weight_scales(results["adaround"]).keys() == weight_scales(results["nearest"]).keys()
    for name, scale in weight_scales(results["nearest"]).items():
        np.testing.assert_array_equal(weight_scales(results["adaround"])[name], scale, err_msg=name)
    # The user sees the one layer's progress (the pass takes minutes on a real CNN).
    assert len(shown) == 1 and shown[0].startswith("adaround 1/1 ") and "flipped" in shown[0], shown


@pytest.mark.parametrize(("reduce_range", "bound"), [(False, 127), (True, 64)])
def test_adaround_weights_stay_int8_within_the_symmetric_range(
    tmp_path: Path, reduce_range: bool, bound: int
) -> None:
    from onnx import numpy_helper

    model = conv_net(seed=4)
    feeds = grid_feeds(16, seed=3)
    config = {**ADAROUND, "reduce_range": reduce_range}
    nearest = apply({**config, "weight_rounding": "nearest"}, model, feeds, tmp_path / "n").model
    result = apply(config, model, feeds, tmp_path / "a")
    (weight,) = result.changes["int8_weights"]
    codes = numpy_helper.to_array(initializers(result.model)[weight])
    original = numpy_helper.to_array(initializers(nearest)[weight])
    assert np.abs(original.astype(int)).max() == bound  # each channel's largest |w| at the grid's end
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= bound
    # Up or down from the float weight: never more than one step from nearest rounding.
    changed = codes.astype(int) - original.astype(int)
    assert np.abs(changed).max() == 1 and 0 < np.mean(changed != 0) < 0.5
    layer = result.changes["adaround"]["layers"]["conv"]
    assert layer["error_adaround"] < layer["error_nearest"]
    assert layer["flipped"] == pytest.approx(np.mean(changed != 0), abs=0.02)


def test_bad_weight_rounding_names_the_field_and_choices() -> None:
    with pytest.raises((RecipeError, ValueError)) as info:
        parse_pass_config({"kind": "int8", "weight_rounding": "stochastic"})
    assert "weight_rounding" in str(info.value)
    assert "nearest" in str(info.value) and "adaround" in str(info.value)


class TestInt8AdaRoundResidual(PassContract):
    """Conv with BN folded, residual Add, depthwise Conv, Gemm: every layer re-rounded in sequence."""

    config: ClassVar[dict[str, Any]] = {**ADAROUND, "adaround_iterations": 100}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "int8", "weight_rounding": "up"},
        {"kind": "int8", "adaround_iterations": 0},
        {"kind": "int8", "adaround_positions": 1},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        from onnx import numpy_helper

        layers = [node for node in after.graph.node if node.op_type in ("Conv", "Gemm")]
        for node in layers:
            check_quantized_layer(after, node, per_channel=True)
        report = result.changes["adaround"]
        assert set(report["layers"]) | set(report["skipped"]) == {node.name for node in layers}
        assert len(report["layers"]) >= 3, report["skipped"]
        for name in result.changes["int8_weights"]:
            codes = numpy_helper.to_array(initializers(after)[name]).astype(int)
            assert np.abs(codes).max() <= 127, name
        assert producers(after)["logits"].op_type == "Gemm"

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        reference = np.stack([run(before, feed)[0] for feed in feeds])
        spread = float(reference.max() - reference.min())
        # Same bound as nearest rounding's contract (tests/compiler/passes/test_quantize.py): one
        # output step per quantization point.
        points = sum(node.op_type == "QuantizeLinear" for node in after.graph.node)
        np.testing.assert_allclose(outputs(after, feeds), reference, rtol=0, atol=points * spread / 255)


@pytest.mark.parametrize(
    ("pads", "strides", "dilations", "group"),
    [([1, 1, 1, 1], [1, 1], [1, 1], 1), ([0, 0, 1, 1], [2, 2], [1, 1], 2), ([2, 1, 2, 1], [1, 2], [2, 1], 6)],
)
def test_im2col_rows_reproduce_the_conv(
    pads: list[int], strides: list[int], dilations: list[int], group: int
) -> None:
    """The rows the optimisation fits on are the Conv's own: padded, strided (EfficientNet's stride-2
    layers pad only the end), dilated and grouped (depthwise)."""
    from onnx import helper

    from edgecam.compiler.passes.adaround import _canonical, _Layer, _patches, _product, _rows
    from edgecam.compiler.passes.bias_correction import _run_single_conv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 6 // group, 3, 3)).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], pads=pads, strides=strides, dilations=dilations, group=group
    )
    expected = _rows(_run_single_conv(node, x, w))
    empty = np.empty(0)
    weight = helper.make_tensor("w", 1, w.shape, w.ravel())
    layer = _Layer(node, node, weight, empty, empty, empty, -127, 127, bias=None, activation=(0, 0))
    chosen = np.sort(rng.choice(len(expected), size=20, replace=False))
    got = _product(_patches(layer, x, chosen), _canonical(layer, w))  # [groups, rows, out/group]
    np.testing.assert_allclose(got.transpose(1, 0, 2).reshape(20, 6), expected[chosen], rtol=1e-4, atol=1e-4)
