"""kind: fp16 — weights and activations in float16, the model's inputs and outputs still float32.

float16 has an 11-bit significand: each rounding is off by at most 2^-11 ≈ 4.9e-4 relative. Through the
few layers of the tiny models that stays within 1e-2 of the output scale (the brief's bound), and it
is not exact: if the outputs matched to 1e-6 the model would not be computing in float16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import concat_net, random_feeds, residual_net, run

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto
RECIPE = Path(__file__).resolve().parents[3] / "models" / "fashion_cnn" / "recipes" / "fp16.yaml"


def apply(config: dict[str, Any], model: Any) -> PassResult:
    return create_pass(parse_pass_config(config)).apply(model, PassContext([], Path()))


def initializer_types(model: Any) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


def check_close_to_fp32(before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
    for feed in feeds:
        want, got = run(before, feed)[0], run(after, feed)[0]
        assert got.dtype == np.float32
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * scale)
        assert not np.allclose(got, want, rtol=0, atol=1e-6 * scale), "nothing was computed in float16"


class TestFp16Residual(PassContract):
    config: ClassVar[dict[str, Any]] = {"kind": "fp16"}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "fp16", "keep_ops": ["conv"]},
        {"kind": "fp16", "keep_ops": ["Soft max"]},
        {"kind": "fp16", "max_finite": 1e5},
        {"kind": "fp16", "min_positive": 0.0},
        {"kind": "fp16", "keep_io_types": False},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        types = initializer_types(after)
        assert set(types) == set(initializer_types(before))  # same weights, new type
        assert set(types.values()) == {FLOAT16}
        assert sorted(result.changes["float16_initializers"]) == sorted(types)
        # The server's contract: the input and output tensors are still float32.
        for value in [*after.graph.input, *after.graph.output]:
            assert value.type.tensor_type.elem_type == FLOAT, value.name
        assert result.changes["casts_added"] == 2
        bytes_ = result.changes["initializer_bytes"]
        assert bytes_["after"] * 2 == bytes_["before"]

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        check_close_to_fp32(before, after, feeds)


class TestFp16KeepOps(PassContract):
    """Clip and Concat kept in float32: their constants stay float32, Casts surround them."""

    config: ClassVar[dict[str, Any]] = {"kind": "fp16", "keep_ops": ["Clip", "Concat"]}

    def build_model(self) -> Any:
        return concat_net()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        types = initializer_types(after)
        assert types["clip_lo"] == types["clip_hi"] == FLOAT  # read only by the float32 Clip
        assert types["ca_w"] == types["c3_w"] == types["fc_w"] == FLOAT16
        kept = [node for node in after.graph.node if node.op_type in ("Clip", "Concat")]
        produced_by = {out: node for node in after.graph.node for out in node.output}
        for node in kept:  # every float16 activation reaching a kept node goes through a Cast
            for name in node.input:
                if name in produced_by:
                    assert produced_by[name].op_type in ("Cast", "Clip"), (node.name, name)
        assert result.changes["kept_ops"] == ["Clip", "Concat"]

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        check_close_to_fp32(before, after, feeds)


def test_excluded_node_computes_in_float32() -> None:
    """`fc` writes the output: the converter would cast its float32 result to float16 (and retype the
    output) despite keep_io_types; the pass keeps the output float32."""
    model = residual_net()
    result = apply({"kind": "fp16", "exclude": ["fc"]}, model)
    types = initializer_types(result.model)
    assert types["fc_w"] == types["fc_b"] == FLOAT and types["c1_w"] == FLOAT16
    assert result.changes["kept_float32_nodes"] == ["fc"]
    check_close_to_fp32(model, result.model, random_feeds(model, 2, seed=5))


def test_weights_outside_float16_range_are_clamped_and_counted() -> None:
    from onnx import numpy_helper

    model = residual_net()
    weight = next(init for init in model.graph.initializer if init.name == "fc_w")
    values = numpy_helper.to_array(weight).copy()
    values[0, 0], values[0, 1] = 7e4, 1e-9  # above the default max_finite (1e4); below min_positive
    weight.CopyFrom(numpy_helper.from_array(values, "fc_w"))
    with pytest.warns(UserWarning, match="truncated"):
        result = apply({"kind": "fp16"}, model)
    assert result.changes["clamped_values"] == 2
    clamped = numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == "fc_w"))
    assert clamped[0, 0] == np.float16(1e4) and clamped[0, 1] == np.float16(1e-7)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "fp16", "keep_ops": ["Softmax"]}, r"'Softmax' is not an op type of this model.*'Conv'"),
        ({"kind": "fp16", "exclude": ["fc9"]}, r"'fc9' matches no node.*conv1"),
    ],
)
def test_selections_that_match_nothing_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(PassError, match=message):
        apply(config, residual_net())


def test_input_model_is_not_touched_by_the_converter() -> None:
    model = residual_net()
    snapshot = model.SerializeToString()
    apply({"kind": "fp16", "keep_ops": ["Relu"]}, model)
    assert model.SerializeToString() == snapshot


def test_bundled_cnn_recipe_keeps_its_predictions() -> None:
    """The fp16 recipe on the bundled CNN and 300 real test images: the same top-1 class on ≥ 99%."""
    import onnx

    from edgecam.compiler.recipe import load_recipe
    from edgecam.models import fashion_cnn
    from edgecam.preprocessing import Preprocessing, preprocess

    recipe, _ = load_recipe(RECIPE)
    model = onnx.load(str(fashion_cnn.onnx_path()))
    converted = create_pass(recipe.passes[0]).apply(model, PassContext([], Path())).model
    spec = Preprocessing.model_validate_json(
        {p.key: p.value for p in model.metadata_props}["edgecam.preprocessing"]
    )
    images, _ = fashion_cnn.load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images[:300]]
    same = [run(model, f)[0].argmax() == run(converted, f)[0].argmax() for f in feeds]
    assert np.mean(same) >= 0.99
