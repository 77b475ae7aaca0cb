"""kind: weight_sharing — k-means codebooks per layer, zeros kept, and a coding that decodes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import mlp, random_feeds, residual_net, run, weights_of, with_weights

from edgecam import weight_codec
from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config

SHARED = {"conv1": "c1_w", "conv2": "c2_w", "dwconv": "dw_w", "fc": "fc_w"}


def apply(config: dict[str, Any], model: Any, tmp_path: Path, seed: int = 0) -> PassResult:
    return create_pass(parse_pass_config(config)).apply(model, PassContext([], tmp_path, seed=seed))


def pruned_mlp(fraction: float = 0.7) -> Any:
    """mlp() with the smallest `fraction` of each MatMul weight set to exactly zero (as `prune` leaves it)."""
    model = mlp()
    values = {}
    for name in ("w0", "w1"):
        w = weights_of(model)[name]
        threshold = np.quantile(np.abs(w), fraction)
        values[name] = np.where(np.abs(w) <= threshold, np.float32(0), w)
    return with_weights(model, values)


def check_sharing(before: Any, after: Any, result: PassResult, weights: dict[str, str], bits: int) -> None:
    """What every shared layer must satisfy, independent of the k-means details."""
    old, new = weights_of(before), weights_of(after)
    assert result.coding is not None and set(result.coding.encoded) == set(weights.values())
    assert result.coding.codec == weight_codec.CODEC
    for layer, name in weights.items():
        shared, original = new[name], old[name]
        codebook = np.unique(shared)
        assert len(codebook) <= 2**bits, layer
        # The coding is what the artifact stores: it decodes to exactly the model's array.
        decoded = result.coding.decode(result.coding.encoded[name])
        assert decoded.dtype == shared.dtype and decoded.shape == shared.shape
        np.testing.assert_array_equal(decoded, shared)
        # Zeros stay zero and only zeros become zero (a pruned pattern is kept exactly).
        np.testing.assert_array_equal(shared == 0, original == 0)
        # Every weight took its nearest centroid among the non-zero ones (zeros aside).
        live = codebook[codebook != 0] if (original == 0).any() else codebook
        moved = original[original != 0].astype(np.float64)
        nearest = np.min(np.abs(moved[:, None] - live[None, :].astype(np.float64)), axis=1)
        np.testing.assert_allclose(np.abs(moved - shared[original != 0]), nearest, rtol=0, atol=1e-7)
        # k-means converged: each non-zero centroid is the mean of its members, up to where sklearn's
        # default tol (centre shift² ≤ 1e-4 × variance) stops it. The linear init is far from that.
        spread = original[original != 0].std()
        for centroid in live:
            members = original[shared == centroid].astype(np.float64)
            assert abs(members.mean() - centroid) <= 0.03 * spread, (layer, centroid)
        entry = result.changes["layers"][layer]
        assert entry["bits"] == bits and entry["centroids_used"] == len(codebook)
        assert entry["coded_bytes"] == len(result.coding.encoded[name]) < entry["raw_bytes"]
    # Nothing else changed: other initializers and the graph are as they were.
    for name, value in old.items():
        if name not in weights.values():
            np.testing.assert_array_equal(new[name], value)
    assert before.graph.node == after.graph.node


class TestWeightSharingResidualNet(PassContract):
    config: ClassVar[dict[str, Any]] = {"kind": "weight_sharing", "bits": 3}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "weight_sharing", "bits": 0},
        {"kind": "weight_sharing", "bits": 9},
        {"kind": "weight_sharing", "layer_bits": {"conv*": 12}},
        {"kind": "weight_sharing", "min_params": -1},
        {"kind": "weight_sharing", "max_iter": 0},
        {"kind": "weight_sharing", "layers": []},
        {"kind": "weight_sharing", "bitz": 4},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        check_sharing(before, after, result, SHARED, bits=3)
        assert result.changes["coded_bytes"] == sum(len(b) for b in result.coding.encoded.values())  # type: ignore[union-attr]

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        # The model computes with exactly the weights the artifact decodes to.
        coding = apply(self.config, before, Path("."), seed=0).coding
        assert coding is not None
        decoded = {name: coding.decode(blob) for name, blob in coding.encoded.items()}
        expected = self.outputs(with_weights(before, decoded), feeds)
        for got, want, orig in zip(
            self.outputs(after, feeds), expected, self.outputs(before, feeds), strict=True
        ):
            np.testing.assert_array_equal(got, want)
            assert not np.allclose(got, orig, atol=1e-4), "3-bit sharing changed nothing"


class TestWeightSharingPrunedMlp(PassContract):
    config: ClassVar[dict[str, Any]] = {"kind": "weight_sharing", "bits": 2, "layers": ["matmul*"]}

    def build_model(self) -> Any:
        return pruned_mlp()

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        check_sharing(before, after, result, {"matmul0": "w0", "matmul1": "w1"}, bits=2)
        for name in ("w0", "w1"):
            values = weights_of(after)[name]
            assert 0.0 in values and len(np.unique(values)) == 4  # 0.0 exact + 3 shared non-zero values
        assert result.changes["layers"]["matmul0"]["zeros"] == round(0.7 * 64 * 48)

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        coding = apply(self.config, before, Path(".")).coding
        assert coding is not None
        decoded = with_weights(before, {n: coding.decode(b) for n, b in coding.encoded.items()})
        for got, want in zip(self.outputs(after, feeds), self.outputs(decoded, feeds), strict=True):
            np.testing.assert_array_equal(got, want)


def test_more_bits_mean_smaller_output_error(tmp_path: Path) -> None:
    model = mlp()
    feeds = random_feeds(model, 8, seed=3)
    reference = np.concatenate([run(model, feed)[0] for feed in feeds])
    errors = []
    for bits in (1, 2, 4, 6, 8):
        shared = apply({"kind": "weight_sharing", "bits": bits}, model, tmp_path).model
        errors.append(float(np.abs(np.concatenate([run(shared, f)[0] for f in feeds]) - reference).max()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02 * np.abs(reference).max(), errors


def test_same_seed_same_bytes_and_few_distinct_values_are_kept_exactly(tmp_path: Path) -> None:
    model = residual_net()
    first = apply({"kind": "weight_sharing", "bits": 4}, model, tmp_path, seed=5)
    again = apply({"kind": "weight_sharing", "bits": 4}, model, tmp_path, seed=5)
    assert first.coding is not None and again.coding is not None
    assert first.coding.encoded == again.coding.encoded
    # A layer that already has ≤ 2**bits distinct values is stored exactly, not re-clustered.
    levels = np.array([-0.5, 0.0, 0.25], np.float32)
    three = with_weights(model, {"c2_w": levels[np.arange(64) % 3].reshape(8, 8, 1, 1)})
    result = apply({"kind": "weight_sharing", "bits": 2, "layers": ["conv2"]}, three, tmp_path)
    np.testing.assert_array_equal(weights_of(result.model)["c2_w"], weights_of(three)["c2_w"])


def test_layer_bits_exclude_and_min_params(tmp_path: Path) -> None:
    config = {
        "kind": "weight_sharing",
        "bits": 5,
        "layer_bits": {"fc": 2, "conv*": 3},
        "exclude": ["dwconv"],
        "min_params": 100,
    }
    result = apply(config, residual_net(), tmp_path)
    layers = result.changes["layers"]
    assert {name: entry["bits"] for name, entry in layers.items()} == {"conv1": 3}
    assert result.changes["skipped"] == {
        "conv2": "64 weights < min_params 100",
        "dwconv": "excluded",
        "fc": "80 weights < min_params 100",
    }
    assert result.coding is not None and set(result.coding.encoded) == {"c1_w"}
    nothing = apply({**config, "min_params": 10_000}, residual_net(), tmp_path)
    assert nothing.coding is None and nothing.changes["layers"] == {}  # no coding to store


def test_an_all_zero_layer_and_a_pattern_matching_nothing(tmp_path: Path) -> None:
    model = with_weights(mlp(), {"w1": np.zeros((48, 10), np.float32)})
    result = apply({"kind": "weight_sharing", "bits": 3}, model, tmp_path)
    assert result.coding is not None
    np.testing.assert_array_equal(result.coding.decode(result.coding.encoded["w1"]), np.zeros((48, 10)))
    assert result.changes["layers"]["matmul1"]["centroids"] == 1
    with pytest.raises(PassError, match=r"`layers` pattern 'conv\*' matches no .*matmul0, matmul1"):
        apply({"kind": "weight_sharing", "layers": ["conv*"]}, mlp(), tmp_path)
    with pytest.raises(PassError, match="`layer_bits` pattern 'fc9'"):
        apply({"kind": "weight_sharing", "layer_bits": {"fc9": 3}}, mlp(), tmp_path)


def test_a_layer_whose_coding_is_bigger_than_its_raw_weights_stays_raw(tmp_path: Path) -> None:
    """conv2's 64 weights at 8 bits: a 64-entry float codebook alone is as big as the raw tensor."""
    model = residual_net()
    result = apply({"kind": "weight_sharing", "bits": 8, "layer_bits": {"conv1": 3}}, model, tmp_path)
    assert result.coding is not None
    assert "c2_w" not in result.coding.encoded and "c1_w" in result.coding.encoded
    assert result.changes["skipped"]["conv2"].endswith("kept raw")
    assert "conv2" not in result.changes["layers"]
    np.testing.assert_array_equal(weights_of(result.model)["c2_w"], weights_of(model)["c2_w"])
    for entry in result.changes["layers"].values():  # whatever is coded is smaller than it was
        assert entry["coded_bytes"] < entry["raw_bytes"]


def test_weight_sharing_after_int8_is_refused_by_name(tmp_path: Path) -> None:
    model = residual_net()
    context = PassContext(random_feeds(model, 8), tmp_path)
    quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(model, context).model
    with pytest.raises(PassError, match=r"int8 and weight_sharing do not combine.*keep one of them"):
        apply({"kind": "weight_sharing"}, quantized, tmp_path)
