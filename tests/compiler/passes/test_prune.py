"""kind: prune — unstructured magnitude pruning: exactly the smallest |w| become 0, nothing else changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import mlp, residual_net, run, weights_of, with_weights

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config

PRUNED = {"c1_w", "c2_w", "dw_w", "fc_w", "w0", "w1"}  # the Conv/Gemm/MatMul weights of the tiny models


def zero_below_kth(values: np.ndarray, count: int) -> np.ndarray:
    """The math of the pass written independently: zero every |w| at or below the count-th smallest."""
    if count == 0:
        return values.copy()
    threshold = np.sort(np.abs(values).ravel())[count - 1]
    return np.where(np.abs(values) <= threshold, np.float32(0), values).astype(values.dtype)


def apply(config: dict[str, Any], model: Any, tmp_path: Path) -> Any:
    return create_pass(parse_pass_config(config)).apply(model, PassContext([], tmp_path))


class TestPrunePerLayer(PassContract):
    config: ClassVar[dict[str, Any]] = {"kind": "prune", "sparsity": 0.6}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "prune", "sparsity": 1.0},
        {"kind": "prune", "sparsity": -0.1},
        {"kind": "prune", "scope": "layerwise"},
        {"kind": "prune", "min_params": -1},
        {"kind": "prune", "layers": []},
        {"kind": "prune", "sparsty": 0.5},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def expected(self, before: Any) -> Any:
        pruned = {
            name: zero_below_kth(value, round(0.6 * value.size))
            for name, value in weights_of(before).items()
            if name in PRUNED
        }
        return with_weights(before, pruned)

    def check_structure(self, before: Any, after: Any, result: Any) -> None:
        # Exact: the output is the input with exactly the smallest 60% of each layer's weights zeroed;
        # biases, BN and the graph are byte-for-byte the same.
        assert after.SerializeToString() == self.expected(before).SerializeToString()
        for name, entry in result.changes["layers"].items():
            assert entry["zeros"] == round(0.6 * entry["params"]), name
        assert set(result.changes["layers"]) == {"conv1", "conv2", "dwconv", "fc"}

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        expected = self.outputs(self.expected(before), feeds)
        for got, want, orig in zip(
            self.outputs(after, feeds), expected, self.outputs(before, feeds), strict=True
        ):
            np.testing.assert_array_equal(got, want)
            assert not np.allclose(got, orig, atol=1e-3), "pruning 60% of the weights changed nothing"


class TestPruneGlobal(PassContract):
    config: ClassVar[dict[str, Any]] = {
        "kind": "prune",
        "sparsity": 0.7,
        "scope": "global",
        "layers": ["matmul*"],
    }

    def build_model(self) -> Any:
        return mlp()

    def check_structure(self, before: Any, after: Any, result: Any) -> None:
        old, new = weights_of(before), weights_of(after)
        values = np.concatenate([old["w0"].ravel(), old["w1"].ravel()])
        count = round(0.7 * values.size)
        threshold = np.sort(np.abs(values))[count - 1]
        for name in ("w0", "w1"):  # one threshold for both layers: their sparsities differ
            np.testing.assert_array_equal(new[name], np.where(np.abs(old[name]) <= threshold, 0, old[name]))
        for name in ("b0", "b1"):
            np.testing.assert_array_equal(new[name], old[name])
        assert result.changes["zeros"] == count
        sparsities = {entry["sparsity"] for entry in result.changes["layers"].values()}
        assert len(sparsities) == 2

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        old = weights_of(before)
        for feed in feeds:  # the pruned MLP computed by hand in numpy
            hidden = np.maximum(feed["x"] @ weights_of(after)["w0"] + old["b0"], 0)
            logits = hidden @ weights_of(after)["w1"] + old["b1"]
            np.testing.assert_allclose(run(after, feed)[0], logits, rtol=1e-5, atol=1e-5)


def test_exclude_and_min_params_leave_layers_dense(tmp_path: Path) -> None:
    model = residual_net()
    config = {"kind": "prune", "sparsity": 0.5, "exclude": ["fc"], "min_params": 70}
    result = apply(config, model, tmp_path)
    assert set(result.changes["layers"]) == {"conv1", "dwconv"}
    assert result.changes["skipped"] == {"conv2": "64 weights < min_params 70", "fc": "excluded"}
    old, new = weights_of(model), weights_of(result.model)
    for name in ("c2_w", "fc_w"):
        np.testing.assert_array_equal(new[name], old[name])
    assert np.count_nonzero(new["c1_w"] == 0) == 108


def test_a_layers_pattern_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PassError, match=r"'conv9'.*conv1, conv2, dwconv, fc"):
        apply({"kind": "prune", "layers": ["conv9"]}, residual_net(), tmp_path)


def test_zero_sparsity_changes_nothing(tmp_path: Path) -> None:
    model = residual_net()
    result = apply({"kind": "prune", "sparsity": 0.0}, model, tmp_path)
    assert result.model.SerializeToString() == model.SerializeToString()


def test_shared_weight_is_pruned_once(tmp_path: Path) -> None:
    model = mlp(sizes=(16, 16, 16))
    model.graph.node[3].input[1] = "w0"  # matmul1 reads matmul0's weight
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "w1"))
    result = apply({"kind": "prune", "sparsity": 0.5}, model, tmp_path)
    assert list(result.changes["layers"]) == ["matmul0"]
    assert "shares weight 'w0'" in result.changes["skipped"]["matmul1"]
    assert np.count_nonzero(weights_of(result.model)["w0"] == 0) == 128


def test_example_recipe_parses() -> None:
    from edgecam.compiler.passes.prune import PruneConfig
    from edgecam.compiler.recipe import load_recipe

    recipe, _ = load_recipe(Path(__file__).parents[3] / "models/fashion_cnn/recipes/prune.yaml")
    assert any(isinstance(p, PruneConfig) for p in recipe.passes)
