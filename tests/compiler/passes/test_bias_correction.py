"""bias_correction on prune and weight_sharing: each corrected layer's mean output over the calibration
frames is the original's again (exact for a layer whose input the pass did not change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import random_feeds, residual_net, weights_of

from edgecam import weight_codec
from edgecam.compiler.errors import RecipeError
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.passes.bias_correction import input_means


def channel_means(model: Any, tensors: list[str], feeds: list[Any]) -> dict[str, np.ndarray]:
    """Per output channel means of `tensors` over `feeds` (the quantity bias correction restores)."""
    return {
        name: mean.reshape(mean.shape[0], -1).mean(axis=1) if mean.ndim > 1 else mean
        for name, mean in input_means(model, tensors, feeds).items()
    }


def apply(config: dict[str, Any], model: Any, feeds: list[Any], tmp_path: Path) -> Any:
    return create_pass(parse_pass_config(config)).apply(model, PassContext(feeds, tmp_path))


@pytest.mark.parametrize(
    ("config", "layer", "output"),
    [
        ({"kind": "prune", "sparsity": 0.6, "layers": ["conv1"]}, "conv1", "c1"),
        ({"kind": "prune", "sparsity": 0.6, "layers": ["fc"]}, "fc", "logits"),  # Gemm, transB
        ({"kind": "weight_sharing", "bits": 1, "layers": ["conv1"]}, "conv1", "c1"),
    ],
)
def test_corrected_layer_keeps_its_mean_output(
    config: dict[str, Any], layer: str, output: str, tmp_path: Path
) -> None:
    model = residual_net()
    feeds = random_feeds(model, 16)
    # Inputs the pass does not touch (the image for conv1; for fc its input is unchanged too).
    original = channel_means(model, [output], feeds)[output]
    plain = apply(config, model, feeds, tmp_path)
    corrected = apply({**config, "bias_correction": True}, model, feeds, tmp_path)

    assert not np.allclose(channel_means(plain.model, [output], feeds)[output], original, atol=1e-3)
    np.testing.assert_allclose(channel_means(corrected.model, [output], feeds)[output], original, atol=1e-5)
    report = corrected.changes["bias_correction"]
    assert set(report["max_abs_shift"]) == {layer} and report["max_abs_shift"][layer] > 1e-3
    # Only the bias moved: weights are the uncorrected pass's.
    before, after = weights_of(plain.model), weights_of(corrected.model)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed == {{"conv1": "c1_b", "fc": "fc_b"}[layer]}


def test_a_layer_without_bias_gets_one(tmp_path: Path) -> None:
    import onnx

    model = residual_net()
    conv = next(node for node in model.graph.node if node.name == "conv1")
    del conv.input[2]
    onnx.checker.check_model(model)
    feeds = random_feeds(model, 8)
    result = apply(
        {"kind": "prune", "sparsity": 0.5, "layers": ["conv1"], "bias_correction": True},
        model,
        feeds,
        tmp_path,
    )
    conv = next(node for node in result.model.graph.node if node.name == "conv1")
    assert len(conv.input) == 3 and conv.input[2] in weights_of(result.model)
    onnx.checker.check_model(result.model)
    np.testing.assert_allclose(
        channel_means(result.model, ["c1"], feeds)["c1"], channel_means(model, ["c1"], feeds)["c1"], atol=1e-5
    )


def test_weight_sharing_coding_survives_the_correction(tmp_path: Path) -> None:
    model = residual_net()
    feeds = random_feeds(model, 8)
    result = apply({"kind": "weight_sharing", "bits": 2, "bias_correction": True}, model, feeds, tmp_path)
    weights = weights_of(result.model)
    assert result.coding is not None
    for name, blob in result.coding.encoded.items():  # the coded weights are exactly the model's
        np.testing.assert_array_equal(weight_codec.decode(blob), weights[name])
    assert not set(result.coding.encoded) & {"c1_b", "c2_b", "dw_b", "fc_b"}


@pytest.mark.parametrize("kind", ["prune", "weight_sharing"])
def test_bias_correction_without_calibration_is_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="calibration"):
        apply({"kind": kind, "bias_correction": True}, residual_net(), [], tmp_path)
