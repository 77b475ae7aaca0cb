"""kind: filter_prune — whole Conv filters go, with the matching inputs of every layer that reads them.

The numbers tests build the comparison the math promises: in a copy of the original, the removed
channels are made dead (their filters, biases and BN/constant shifts zero, so they output exactly 0
after the nonlinearity); that copy must compute what the smaller pruned model computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pass_template import PassContract
from tiny_models import concat_net, mlp, random_feeds, residual_net, run, weights_of, with_weights

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config
from edgecam.compiler.passes.backends.onnx import parameter_count


def apply(config: dict[str, Any], model: Any, tmp_path: Path) -> PassResult:
    return create_pass(parse_pass_config(config)).apply(model, PassContext([], tmp_path))


def lowest_l1(count: int, *filters: np.ndarray) -> list[int]:
    """Channels with the smallest L1 norm, summed over filters that must lose the same channels."""
    norms = sum(np.abs(f).reshape(f.shape[0], -1).sum(axis=1) for f in filters)
    return sorted(int(i) for i in np.argsort(norms, kind="stable")[:count])


def kept(total: int, removed: list[int]) -> list[int]:
    return [i for i in range(total) if i not in removed]


def dead(model: Any, zero_rows: dict[str, list[int]]) -> Any:
    """The original model with the given channels (axis 0 unless noted) of these initializers zeroed."""
    values = weights_of(model)
    for name, rows in zero_rows.items():
        values[name] = values[name].copy()
        axis = 1 if values[name].ndim == 4 and values[name].shape[0] == 1 else 0  # [1,C,1,1] constants
        np.moveaxis(values[name], axis, 0)[rows] = 0
    return with_weights(model, values)


def count_macs(model: Any) -> int:
    """Multiply-accumulates of the Conv/Gemm/MatMul layers at the model's static input shape."""
    from edgecam.compiler.passes.backends.onnx import tensor_shapes

    shapes = tensor_shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # [out, in/group, kh, kw]: each output element reads one filter
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            reduced = shapes[node.input[1]]
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            total += int(np.prod(shapes[node.output[0]])) * reduced[1 if transposed else 0]
    return total


class TestFilterPruneResidual(PassContract):
    """conv1 and conv2 meet in a residual Add: one group, ranked by their summed L1 norms."""

    config: ClassVar[dict[str, Any]] = {"kind": "filter_prune", "ratio": 0.5}
    invalid_configs: ClassVar[list[dict[str, Any]]] = [
        {"kind": "filter_prune", "ratio": 1.0},
        {"kind": "filter_prune", "ratio": -0.1},
        {"kind": "filter_prune", "round_to": 0},
        {"kind": "filter_prune", "ratios": {"conv1": 1.5}},
        {"kind": "filter_prune", "layers": []},
        {"kind": "filter_prune", "rato": 0.5},
    ]

    def build_model(self) -> Any:
        return residual_net()

    def removed(self, model: Any) -> list[int]:
        w = weights_of(model)
        return lowest_l1(4, w["c1_w"], w["c2_w"])

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        old, new, removed = weights_of(before), weights_of(after), self.removed(before)
        keep = kept(8, removed)
        for name in ("c1_w", "c1_b", "c2_b", "bn_scale", "bn_bias", "bn_mean", "bn_var", "dw_w", "dw_b"):
            np.testing.assert_array_equal(new[name], old[name][keep], err_msg=name)
        np.testing.assert_array_equal(new["c2_w"], old["c2_w"][keep][:, keep])
        np.testing.assert_array_equal(new["fc_w"], old["fc_w"][:, keep])
        depthwise = next(n for n in after.graph.node if n.name == "dwconv")
        assert next(a.i for a in depthwise.attribute if a.name == "group") == 4
        for layer in ("conv1", "conv2"):
            report = result.changes["layers"][layer]
            assert (report["channels_before"], report["channels_after"], report["removed"]) == (8, 4, removed)
        assert result.changes["params_after"] == parameter_count(after) < parameter_count(before)

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        removed = self.removed(before)
        zero = ("c1_w", "c1_b", "bn_bias", "bn_mean", "c2_w", "c2_b", "dw_b")
        reference = dead(before, dict.fromkeys(zero, removed))
        for got, want in zip(self.outputs(after, feeds), self.outputs(reference, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(self.outputs(before, feeds)[0], self.outputs(after, feeds)[0], atol=1e-3)


class TestFilterPruneConcat(PassContract):
    """Concat offsets, per-channel Mul/Add constants, Clip, pools and a MatMul over H*W columns."""

    config: ClassVar[dict[str, Any]] = {"kind": "filter_prune", "ratio": 0.5}

    def build_model(self) -> Any:
        return concat_net()

    def removed(self, model: Any) -> dict[str, list[int]]:
        w = weights_of(model)
        return {"a": lowest_l1(2, w["ca_w"]), "b": lowest_l1(3, w["cb_w"]), "c3": lowest_l1(4, w["c3_w"])}

    def check_structure(self, before: Any, after: Any, result: PassResult) -> None:
        old, new, removed = weights_of(before), weights_of(after), self.removed(before)
        keep_a, keep_b, keep3 = kept(4, removed["a"]), kept(6, removed["b"]), kept(8, removed["c3"])
        concat_keep = keep_a + [4 + i for i in keep_b]  # b's channels sit after a's 4 in the Concat
        np.testing.assert_array_equal(new["c3_w"], old["c3_w"][keep3][:, concat_keep])
        np.testing.assert_array_equal(new["ca_scale"], old["ca_scale"][:, keep_a])
        np.testing.assert_array_equal(new["cb_shift"], old["cb_shift"][keep_b])
        rows = [c * 9 + k for c in keep3 for k in range(9)]  # Flatten of [N, C, 3, 3]: 9 columns per channel
        np.testing.assert_array_equal(new["fc_w"], old["fc_w"][rows])
        channels = {
            k: (v["channels_before"], v["channels_after"]) for k, v in result.changes["layers"].items()
        }
        assert channels == {"conva": (4, 2), "convb": (6, 3), "conv3": (8, 4)}

    def check_numbers(self, before: Any, after: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        r = self.removed(before)
        zero = {"ca_w": r["a"], "ca_b": r["a"], "ca_scale": r["a"], "cb_w": r["b"], "cb_b": r["b"]}
        zero |= {"cb_shift": r["b"], "c3_w": r["c3"], "c3_b": r["c3"]}
        reference = dead(before, zero)
        for got, want in zip(self.outputs(after, feeds), self.outputs(reference, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ratio_overrides_round_to_and_keep_one(tmp_path: Path) -> None:
    model = concat_net()
    only_conv3 = {"kind": "filter_prune", "ratio": 0.0, "ratios": {"conv3": 0.75}}
    layers = apply(only_conv3, model, tmp_path).changes["layers"]
    assert [v["channels_after"] for v in layers.values()] == [4, 6, 2]
    rounded = apply({"kind": "filter_prune", "ratio": 0.6, "round_to": 3}, model, tmp_path)
    assert rounded.changes["layers"]["conv3"]["channels_after"] == 6  # 8 - 4 = 4, rounded up to 6
    most = apply({"kind": "filter_prune", "ratio": 0.99}, model, tmp_path)
    assert [v["channels_after"] for v in most.changes["layers"].values()] == [1, 1, 1]
    feed = random_feeds(model, 1)[0]
    assert run(most.model, feed)[0].shape == (1, 10)


def test_a_flattening_reshape_is_followed(tmp_path: Path) -> None:
    """torch's `x.view(1, -1)` exports a Reshape with a constant shape, here [1, 8]: it becomes [1, -1]."""
    from onnx import helper, numpy_helper

    model = residual_net()
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Flatten")
    model.graph.node[index].CopyFrom(
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="view")
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 8], np.int64), "flat_shape"))
    result = apply({"kind": "filter_prune", "ratio": 0.5}, model, tmp_path)
    np.testing.assert_array_equal(weights_of(result.model)["flat_shape"], [1, -1])
    contract = TestFilterPruneResidual()
    feeds = random_feeds(model, 2)
    contract.check_numbers(model, result.model, feeds)


def _chain(nodes: list[Any], inits: dict[str, np.ndarray], out: str, out_shape: list[int]) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _conv(name: str, src: str, dst: str) -> Any:
    from onnx import helper

    return helper.make_node("Conv", [src, f"{name}_w"], [dst], pads=[1, 1, 1, 1], name=name)


WEIGHTS = {f"{n}_w": np.random.default_rng(i).standard_normal((4, 4, 3, 3)) for i, n in enumerate("ab")}


def test_an_op_it_cannot_follow_is_refused_unless_the_layer_is_excluded(tmp_path: Path) -> None:
    from onnx import helper

    nodes = [
        _conv("a", "image", "ca"),
        _conv("b", "image", "cb"),
        helper.make_node("Transpose", ["cb"], ["t"], perm=[0, 1, 3, 2], name="swap_hw"),
        helper.make_node("Add", ["ca", "t"], ["out"], name="add"),
    ]
    model = _chain(nodes, WEIGHTS, "out", [1, 4, 8, 8])
    with pytest.raises(PassError, match=r"layer 'b' into Transpose node 'swap_hw'"):
        apply({"kind": "filter_prune", "ratio": 0.5}, model, tmp_path)
    with pytest.raises(PassError, match=r"layer 'a' reach graph output 'out'"):
        apply({"kind": "filter_prune", "ratio": 0.5, "exclude": ["b"]}, model, tmp_path)
    result = apply({"kind": "filter_prune", "ratio": 0.5, "exclude": ["a", "b"]}, model, tmp_path)
    assert result.changes["skipped"] == {"a": "excluded", "b": "excluded"}
    assert weights_of(result.model)["a_w"].shape == (4, 4, 3, 3)


def test_channels_tied_to_an_unpruned_tensor_are_pinned(tmp_path: Path) -> None:
    from onnx import helper

    nodes = [
        _conv("a", "image", "ca"),
        helper.make_node("Add", ["ca", "image"], ["res"], name="residual"),  # image's channels cannot go
        _conv("b", "res", "out"),
    ]
    model = _chain(nodes, WEIGHTS, "out", [1, 4, 8, 8])
    result = apply({"kind": "filter_prune", "ratio": 0.5, "exclude": ["b"]}, model, tmp_path)
    report = result.changes["layers"]["a"]
    assert report["channels_after"] == 4
    assert "Add 'residual'" in report["pinned"]["why"]


def test_a_model_without_conv_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PassError, match=r"pattern '\*' matches no Conv layer"):
        apply({"kind": "filter_prune"}, mlp(), tmp_path)


def test_bundled_model_gets_smaller_and_still_runs(tmp_path: Path) -> None:
    import onnx

    from edgecam.models.fashion_cnn import load_samples, onnx_path

    model = onnx.load(str(onnx_path()))
    result = apply({"kind": "filter_prune", "ratio": 0.2}, model, tmp_path)
    assert parameter_count(result.model) < 0.7 * parameter_count(model)
    assert count_macs(result.model) < 0.7 * count_macs(model)  # the ≥30% fewer MACs target
    images, _ = load_samples()
    image = ((images[:1].astype(np.float32) / 255 - 0.286) / 0.353)[None]
    logits = run(result.model, {"image": image})[0]
    assert logits.shape == (1, 10) and np.isfinite(logits).all()


def test_example_recipe_parses() -> None:
    from edgecam.compiler.passes.filter_prune import FilterPruneConfig
    from edgecam.compiler.recipe import load_recipe

    recipe, _ = load_recipe(Path(__file__).parents[3] / "models/fashion_cnn/recipes/filter_prune.yaml")
    assert any(isinstance(p, FilterPruneConfig) for p in recipe.passes)


def test_bias_correction_keeps_each_consumers_mean_output(tmp_path: Path) -> None:
    """conv2 reads conv1's channels (through BN and Relu) and, tied by the residual Add, loses the same
    output channels. With bias correction, each kept conv2 channel's mean over the calibration inputs is
    exactly the original's: the removed inputs' average contribution moved into its bias."""
    from edgecam.compiler.passes.bias_correction import input_means

    model = residual_net()
    feeds = random_feeds(model, 16)
    config = {"kind": "filter_prune", "ratio": 0.5, "bias_correction": True}
    result = create_pass(parse_pass_config(config)).apply(model, PassContext(feeds, tmp_path))
    plain = apply({**config, "bias_correction": False}, model, tmp_path)

    removed = result.changes["layers"]["conv2"]["removed"]
    kept = [c for c in range(8) if c not in removed]
    assert len(kept) == 4

    def channel_means(m: Any) -> np.ndarray:
        return input_means(m, ["c2"], feeds)["c2"].mean(axis=(1, 2))

    original = channel_means(model)[kept]
    np.testing.assert_allclose(channel_means(result.model), original, atol=1e-5)
    assert not np.allclose(channel_means(plain.model), original, atol=1e-3)
    assert set(result.changes["bias_correction"]["max_abs_shift"]) == {"conv2", "fc"}


def test_bias_correction_needs_calibration(tmp_path: Path) -> None:
    from edgecam.compiler.errors import RecipeError

    with pytest.raises(RecipeError, match="calibration"):
        apply({"kind": "filter_prune", "bias_correction": True}, residual_net(), tmp_path)
