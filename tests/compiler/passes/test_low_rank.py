"""kind: low_rank — truncated SVD (Gemm, MatMul, 1×1 Conv) and Tucker-2 (k×k Conv).

The expected math is written here with numpy (SVD, HOSVD, projections), independently of the pass:
the factored model must equal the original model whose weights hold that reconstruction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import factor_net, mlp, random_feeds, residual_net, run, weights_of, with_weights

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.passes.backends.onnx import OnnxGraph
from edgecam.compiler.passes.low_rank import LowRankConfig, factor_layers
from edgecam.compiler.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[3] / "models" / "fashion_cnn" / "recipes" / "low_rank.yaml"
# factor_net's layers that truncated SVD factors, and their weights.
SVD_LAYERS = {"conv1x1": "p1_w", "fc1": "fc1_w", "fc2": "fc2_w"}


def apply(config: dict[str, Any], model: Any) -> Any:
    return create_pass(parse_pass_config(config)).apply(model, PassContext([], Path()))


def nodes_of(model: Any) -> dict[str, Any]:
    return {node.name: node for node in model.graph.node}


def attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def as_matrix(name: str, value: np.ndarray) -> np.ndarray:
    """factor_net's SVD-layer weights as [out, in] (fc2 is Gemm without transB: [in, out])."""
    return value.T if name == "fc2_w" else value.reshape(value.shape[0], value.shape[1])


def truncated(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def rank_for(matrix: np.ndarray, energy: float) -> int:
    s2 = np.linalg.svd(matrix.astype(np.float64), compute_uv=False) ** 2
    return int(np.argmax(np.cumsum(s2) / s2.sum() >= energy)) + 1


def tucker_parts(after: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u_in [in, r_in], core, u_out [out, r_out]) read back from the three factored convs."""
    weights = weights_of(after)
    u_in = weights["conv3x3.lr_in.weight"][:, :, 0, 0].T
    u_out = weights["conv3x3.lr_out.weight"][:, :, 0, 0]
    return u_in, weights["conv3x3.lr_core.weight"], u_out


def recompose(u_in: np.ndarray, core: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    return np.einsum("abhw,oa,ib->oihw", core, u_out, u_in, optimize=True)


def hosvd(weight: np.ndarray, r_out: int, r_in: int) -> np.ndarray:
    """Truncated HOSVD on the channel modes: the start HOOI improves on."""
    u_out = np.linalg.svd(weight.reshape(weight.shape[0], -1))[0][:, :r_out]
    u_in = np.linalg.svd(np.moveaxis(weight, 1, 0).reshape(weight.shape[1], -1))[0][:, :r_in]
    return np.einsum("oihw,oa,ib,pa,jb->pjhw", weight, u_out, u_in, u_out, u_in, optimize=True)


def assert_same_outputs(got: Any, want: Any, feeds: list[dict[str, np.ndarray]], atol: float) -> None:
    for feed in feeds:
        np.testing.assert_allclose(run(got, feed)[0], run(want, feed)[0], atol=atol, rtol=0)


class TestExactRank(PassContract):
    """Weights of exact rank 2: energy 1.0 keeps all of it, so the factored model is the original."""

    config: ClassVar[dict[str, Any]] = {"kind": "low_rank", "energy": 1.0}
    invalid_configs = [  # noqa: RUF012 - the template reads it as a class attribute
        {"kind": "low_rank", "energy": 0.0},
        {"kind": "low_rank", "energy": 1.5},
        {"kind": "low_rank", "ratio": 1.0},
        {"kind": "low_rank", "energy": 0.9, "ratio": 0.5},
        {"kind": "low_rank", "energy": 0.9, "min_params": -1},
        {"kind": "low_rank", "energy": 0.9, "min_saving": 1.0},
        {"kind": "low_rank", "energy": 0.9, "layers": []},
        {"kind": "low_rank", "energy": 0.9, "overrides": {"fc*": {"energy": 2.0}}},
        {"kind": "low_rank", "energy": 0.9, "overrides": {"fc*": {}}},
        {"kind": "low_rank", "enrgy": 0.9},
    ]

    def build_model(self) -> Any:
        return factor_net(rank=2)

    def check_structure(self, before: Any, after: Any, result: Any) -> None:
        nodes = nodes_of(after)
        weights = weights_of(after)
        shape = {name: list(weights[f"{name}.weight"].shape) for name in nodes if ".lr_" in name}
        assert shape == {
            "conv3x3.lr_in": [2, 8, 1, 1],
            "conv3x3.lr_core": [2, 2, 3, 3],
            "conv3x3.lr_out": [16, 2, 1, 1],
            "conv1x1.lr_v": [2, 16, 1, 1],
            "conv1x1.lr_u": [16, 2, 1, 1],
            "fc1.lr_v": [2, 16],  # transB=1 kept: [out, in] layouts
            "fc1.lr_u": [24, 2],
            "fc2.lr_v": [24, 2],  # transB=0 kept: [in, out] layouts
            "fc2.lr_u": [2, 10],
        }
        order = [n.name for n in after.graph.node]
        assert order[:3] == ["conv3x3.lr_in", "conv3x3.lr_core", "conv3x3.lr_out"]
        # Strides and pads go to the core (Tucker) or the first 1×1 conv (SVD); the bias and alpha/beta
        # to the last layer.
        assert attrs(nodes["conv3x3.lr_core"]) == {
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "kernel_shape": [3, 3],
        }
        assert attrs(nodes["conv1x1.lr_v"]) == {
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "kernel_shape": [1, 1],
        }
        assert attrs(nodes["conv1x1.lr_u"]) == {"kernel_shape": [1, 1]}
        assert list(nodes["conv3x3.lr_out"].input)[2] == "k3_b" and len(nodes["conv3x3.lr_in"].input) == 2
        assert attrs(nodes["fc2.lr_u"]) == {"alpha": 0.5, "beta": 2.0, "transB": 0}
        assert list(nodes["fc2.lr_u"].input)[2] == "fc2_b" and list(nodes["fc2.lr_u"].output) == ["logits"]
        assert not {"k3_w", "p1_w", "fc1_w", "fc2_w"} & set(weights), "replaced weights must be dropped"
        changes = result.changes
        assert changes["layers"]["conv3x3"]["ranks"] == {"out": 2, "in": 2}
        assert changes["layers"]["conv3x3"]["params_after"] == 2 * 8 + 2 * 2 * 9 + 16 * 2
        assert {changes["layers"][n]["ranks"]["rank"] for n in SVD_LAYERS} == {2}
        assert changes["skipped"] == {
            "dwconv": "it is a grouped conv (group=16); only group=1 convs are factored"
        }
        assert changes["params_after"] == changes["params_before"] - sum(
            e["params_before"] - e["params_after"] for e in changes["layers"].values()
        )

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        assert_same_outputs(after, before, feeds, atol=1e-4)


class TestEnergy(PassContract):
    """Energy 0.8: SVD layers equal numpy's truncated SVD; the conv is a Tucker approximation."""

    config: ClassVar[dict[str, Any]] = {"kind": "low_rank", "energy": 0.8}

    def build_model(self) -> Any:
        return factor_net(decay=0.7)

    def check_structure(self, before: Any, after: Any, result: Any) -> None:
        old = weights_of(before)
        for layer, weight in SVD_LAYERS.items():
            entry = result.changes["layers"][layer]
            matrix = as_matrix(weight, old[weight])
            assert entry["ranks"] == {"rank": rank_for(matrix, 0.8)}
            s2 = np.linalg.svd(matrix.astype(np.float64), compute_uv=False) ** 2
            assert entry["energy"] == pytest.approx(s2[: entry["ranks"]["rank"]].sum() / s2.sum(), abs=1e-5)
        u_in, core, u_out = tucker_parts(after)
        weight = old["k3_w"].astype(np.float64)
        r_out, r_in = u_out.shape[1], u_in.shape[1]
        assert result.changes["layers"]["conv3x3"]["ranks"] == {"out": r_out, "in": r_in}
        assert r_out < 16 and r_in < 8
        # A Tucker approximation: orthonormal factors, the core is W projected on them, and HOOI is at
        # least as good as the truncated HOSVD at the same ranks; it keeps ≥ 0.8 of ‖W‖².
        np.testing.assert_allclose(u_out.T @ u_out, np.eye(r_out), atol=1e-5)
        np.testing.assert_allclose(u_in.T @ u_in, np.eye(r_in), atol=1e-5)
        np.testing.assert_allclose(
            core, np.einsum("oihw,oa,ib->abhw", weight, u_out, u_in, optimize=True), atol=1e-5
        )
        approx = recompose(u_in, core, u_out)
        assert np.linalg.norm(weight - approx) <= np.linalg.norm(weight - hosvd(weight, r_out, r_in)) + 1e-5
        kept = np.sum(approx**2) / np.sum(weight**2)
        assert kept >= 0.8
        assert result.changes["layers"]["conv3x3"]["energy"] == pytest.approx(kept, abs=1e-5)

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        old = weights_of(before)
        expected = {
            w: truncated(as_matrix(w, old[w]), rank_for(as_matrix(w, old[w]), 0.8))
            for w in SVD_LAYERS.values()
        }
        expected = {w: (m.T if w == "fc2_w" else m.reshape(old[w].shape)) for w, m in expected.items()}
        expected["k3_w"] = recompose(*tucker_parts(after))
        assert_same_outputs(after, with_weights(before, expected), feeds, atol=1e-4)
        assert not np.allclose(run(after, feeds[0])[0], run(before, feeds[0])[0], atol=1e-3)


class TestRatio(PassContract):
    """ratio 0.5 on MatMul layers: the largest rank whose two factors hold ≤ half the weights."""

    config: ClassVar[dict[str, Any]] = {"kind": "low_rank", "ratio": 0.5}

    def build_model(self) -> Any:
        return mlp()

    def check_structure(self, before: Any, after: Any, result: Any) -> None:
        shapes = {name: list(value.shape) for name, value in weights_of(after).items() if ".lr_" in name}
        assert shapes == {  # 64×48: r = ⌊0.5·3072/112⌋ = 13; 48×10: r = ⌊0.5·480/58⌋ = 4
            "matmul0.lr_v.weight": [64, 13],
            "matmul0.lr_u.weight": [13, 48],
            "matmul1.lr_v.weight": [48, 4],
            "matmul1.lr_u.weight": [4, 10],
        }
        assert [n.op_type for n in after.graph.node].count("MatMul") == 4
        for entry in result.changes["layers"].values():
            assert entry["params_after"] <= 0.5 * entry["params_before"]
            assert entry["target"] == {"ratio": 0.5}

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        old = weights_of(before)
        expected = {"w0": truncated(old["w0"].T, 13).T, "w1": truncated(old["w1"].T, 4).T}
        assert_same_outputs(after, with_weights(before, expected), feeds, atol=1e-4)


def test_full_rank_factoring_reproduces_the_model() -> None:
    """At full rank (more weights, so the pass itself would skip it) every layer kind is exact."""
    model = factor_net()
    graph = OnnxGraph.copy_of(model)
    layers = {layer.name: layer for layer in graph.weighted_layers()}
    ranks = {"conv3x3": (16, 8), "conv1x1": (16,), "fc1": (16,), "fc2": (10,)}
    entries = factor_layers(graph, [(layers[name], r) for name, r in ranks.items()])
    assert len(graph.model.graph.node) == len(model.graph.node) + 5
    assert all(entry["energy"] == pytest.approx(1.0, abs=1e-6) for entry in entries.values())
    assert_same_outputs(graph.model, model, random_feeds(model, 3, seed=5), atol=1e-4)


def test_error_decreases_as_energy_increases() -> None:
    model = factor_net(decay=0.8)
    feeds = random_feeds(model, 3, seed=3)
    reference = [run(model, feed)[0] for feed in feeds]
    errors, weight_errors = [], []
    for energy in (0.5, 0.7, 0.85, 0.95):
        result = apply({"kind": "low_rank", "energy": energy}, model)
        outputs = [run(result.model, feed)[0] for feed in feeds]
        errors.append(max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference, strict=True)))
        weight_errors.append(
            [result.changes["layers"][n]["relative_error"] for n in ("conv3x3", *SVD_LAYERS)]
        )
        assert all(e["energy"] >= energy for e in result.changes["layers"].values())
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors), errors
    for layer_errors in zip(*weight_errors, strict=True):
        assert list(layer_errors) == sorted(layer_errors, reverse=True), weight_errors


def test_layers_that_would_grow_are_skipped_with_the_reason() -> None:
    model = residual_net()  # random full-rank weights: energy 1.0 means full rank, which only adds weights
    result = apply({"kind": "low_rank", "energy": 1.0}, model)
    assert result.changes["layers"] == {}
    assert set(result.changes["skipped"]) == {"conv1", "conv2", "dwconv", "fc"}
    assert (
        "would not reduce parameters: rank 8 needs 128 weights, it has 64"
        in result.changes["skipped"]["conv2"]
    )
    assert result.model.SerializeToString() == model.SerializeToString()


def test_overrides_exclude_and_min_params() -> None:
    config = {
        "kind": "low_rank",
        "energy": 0.95,
        "overrides": {"fc2": {"ratio": 0.3}, "fc*": {"energy": 0.5}},  # the first matching pattern wins
        "exclude": ["conv1x1"],
        "min_params": 200,
    }
    result = apply(config, factor_net())
    layers, skipped = result.changes["layers"], result.changes["skipped"]
    assert layers["fc2"]["target"] == {"ratio": 0.3} and layers["fc2"]["ranks"] == {"rank": 2}
    assert layers["fc1"]["target"] == {"energy": 0.5} and layers["conv3x3"]["target"] == {"energy": 0.95}
    assert skipped == {
        "conv1x1": "excluded",
        "dwconv": "it is a grouped conv (group=16); only group=1 convs are factored",  # before its size
    }
    result = apply({"kind": "low_rank", "energy": 0.5, "layers": ["fc*"], "min_params": 300}, factor_net())
    assert set(result.changes["layers"]) == {"fc1"} and result.changes["skipped"] == {
        "fc2": "240 weights < min_params 300"
    }


def test_min_saving_leaves_layers_that_shed_little() -> None:
    everything = apply({"kind": "low_rank", "energy": 0.95}, factor_net()).changes["layers"]
    result = apply({"kind": "low_rank", "energy": 0.95, "min_saving": 0.6}, factor_net())
    kept = {
        n for n, e in everything.items() if e["params_before"] - e["params_after"] > 0.6 * e["params_before"]
    }
    assert kept and kept != set(everything)  # the threshold splits this model's layers
    assert set(result.changes["layers"]) == kept
    for name in set(everything) - kept:
        assert result.changes["skipped"][name].endswith("not more than min_saving 0.6")


def test_ratio_on_a_conv_keeps_about_that_fraction() -> None:
    result = apply({"kind": "low_rank", "ratio": 0.3, "layers": ["conv3x3"]}, factor_net())
    entry = result.changes["layers"]["conv3x3"]
    assert entry["method"] == "tucker2" and entry["params_before"] == 16 * 8 * 9
    assert 0.2 * entry["params_before"] < entry["params_after"] <= 0.3 * entry["params_before"]


def test_explicitly_listed_unsupported_layer_is_refused() -> None:
    with pytest.raises(
        PassError, match=r"'dwconv' is listed explicitly but it is a grouped conv \(group=16\)"
    ):
        apply({"kind": "low_rank", "energy": 0.9, "layers": ["dwconv", "fc1"]}, factor_net())
    with pytest.raises(PassError, match=r"`overrides` pattern 'nope\*' matches no Conv/Gemm/MatMul layer"):
        apply({"kind": "low_rank", "energy": 0.9, "overrides": {"nope*": {"energy": 0.5}}}, factor_net())
    # Matched by a wildcard only: skipped with the reason, not refused.
    result = apply({"kind": "low_rank", "energy": 0.9, "layers": ["*conv*"]}, factor_net())
    assert "grouped conv" in result.changes["skipped"]["dwconv"]


def test_new_names_are_unique_and_readable() -> None:
    from onnx import helper

    model = factor_net(rank=2)
    relu = next(node for node in model.graph.node if node.name == "relu1")
    relu.name = "conv1x1.lr_v"  # a node already holds the name the factored layer wants
    relu.output[0] = "conv1x1.lr_v.out"
    next(node for node in model.graph.node if node.name == "conv1x1").input[0] = "conv1x1.lr_v.out"
    helper.make_model(model.graph)  # still a well-formed graph
    after = apply({"kind": "low_rank", "energy": 1.0}, model).model
    names = [node.name for node in after.graph.node]
    assert len(names) == len(set(names)) and "conv1x1.lr_v_1" in names
    values = [out for node in after.graph.node for out in node.output] + [
        i.name for i in after.graph.initializer
    ]
    assert len(values) == len(set(values))
    assert_same_outputs(after, model, random_feeds(model, 2), atol=1e-4)


def test_bundled_recipe_parses() -> None:
    recipe, _ = load_recipe(RECIPE)
    assert [type(p) for p in recipe.passes] == [LowRankConfig]


@pytest.mark.slow
def test_bundled_recipe_keeps_top1_on_the_fashion_cnn() -> None:
    """The recipe's comment, measured: first 2000 test images, top-1 within the recipe's 1 pp gate."""
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.models.fashion_cnn import load_split
    from edgecam.preprocessing import preprocess

    try:
        images, labels = load_split("t10k")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    recipe, base = load_recipe(RECIPE)
    loaded = load_onnx(base / str(recipe.model))
    feeds = [{loaded.inputs[0].name: preprocess(image, loaded.preprocessing)} for image in images[:2000]]
    result = create_pass(recipe.passes[0]).apply(loaded.proto, PassContext([], Path()))

    def top1(model: Any) -> float:
        return float(np.mean([np.argmax(run(model, feed)[0]) for feed in feeds] == labels[:2000]))

    assert result.changes["params_after"] < 0.6 * result.changes["params_before"]
    assert top1(result.model) >= top1(loaded.proto) - recipe.max_accuracy_drop / 100
