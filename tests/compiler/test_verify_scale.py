"""Verification relative to each output's scale, and through intermediate tensors when the outputs do
not depend on the verification inputs: wrong builds that the old absolute 1e-4 check passed are now
refused, right ones still pass, and the manifest says what was compared."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from convnets import save_graph
from onnx import helper, numpy_helper

from edgecam.compiler import build, intermediates, verify
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import VerificationError


def tiny_net(path: Path) -> Path:
    """[1,3,16,16] → four Conv 3x3 (weights std 0.001, no bias) + Relu → GlobalAveragePool → y [1,8,1,1]:
    random small weights shrink the values ~200x a layer, to outputs of ~1e-10."""
    rng = np.random.default_rng(0)
    nodes, inits, x, channels = [], [], "x", 3
    for layer in range(4):
        weight = (rng.standard_normal((8, channels, 3, 3)) * 0.001).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes += [
            helper.make_node("Conv", [x, f"w{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"]),
        ]
        x, channels = f"r{layer}", 8
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    return save_graph(path, nodes, [1, 3, 16, 16], [1, 8, 1, 1], inits)


def saturated_net(path: Path) -> Path:
    """[1,3,16,16] → Conv 3x3 + Relu → GlobalAveragePool → Flatten → Gemm (+300) → Sigmoid → y [1,4]:
    logits of 300 ± tens, so y is exactly 1.0 for every input, whatever the conv computes."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((4, 8)) * 30).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.full(4, 300.0, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Sigmoid", ["logits"], ["y"]),
    ]
    return save_graph(path, nodes, [1, 3, 16, 16], [1, 4], inits)


def corrupt_first_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build bug: the compiler builds the model with its first initializer doubled (ORT runs the
    model as it is)."""
    right = build.to_relax

    def wrong(model: Any, params: Any = ()) -> Any:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        first = proto.graph.initializer[0]
        first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 2, first.name))
        return right(dataclasses.replace(model, proto=proto), params)

    monkeypatch.setattr(build, "to_relax", wrong)


def test_a_right_build_of_tiny_outputs_passes_relative_to_their_scale(tmp_path: Path) -> None:
    artifact = compile_model(tiny_net(tmp_path / "tiny.onnx"), "x86_64", tmp_path / "art", samples=4)
    verification = artifact.manifest.verification
    assert verification is not None and verification.outputs_depend_on_inputs is True
    (output,) = verification.compared
    assert output.tensor == "y" and output.kind == "output" and output.metric == verify.METRIC
    assert 1e-12 < output.scale < 1e-5  # the outputs are tiny, as the issue's random-weight networks'
    assert output.value <= output.bound == pytest.approx(verify.FLOAT_TOLERANCE)
    assert verification.tolerance == pytest.approx(verify.FLOAT_TOLERANCE * output.scale)


def test_wrong_weights_under_tiny_outputs_are_refused_though_within_1e4_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_net(tmp_path / "tiny.onnx")
    corrupt_first_weight(monkeypatch)
    # The old check (1e-4 absolute, now only as an explicit --tolerance) lets the wrong build through:
    passed = compile_model(model, "x86_64", tmp_path / "old", tolerance=1e-4, samples=4)
    assert passed.manifest.verification is not None
    assert 1e-12 < passed.manifest.verification.max_abs_diff < 1e-4
    with pytest.raises(VerificationError) as caught:
        compile_model(model, "x86_64", tmp_path / "art", samples=4)
    assert "in output 'y'" in str(caught.value) and "of its largest |value|" in str(caught.value)
    assert not (tmp_path / "art").exists()


def test_a_saturated_output_is_verified_through_the_tensor_before_it(tmp_path: Path) -> None:
    artifact = compile_model(saturated_net(tmp_path / "sat.onnx"), "x86_64", tmp_path / "art", samples=4)
    verification = artifact.manifest.verification
    assert verification is not None and verification.outputs_depend_on_inputs is False
    output, inner = verification.compared
    assert (output.tensor, output.kind, output.input_sensitivity) == ("y", "output", 0.0)
    assert inner.tensor == "logits" and inner.kind == "intermediate"
    assert inner.input_sensitivity > verify.INPUT_SENSITIVITY and inner.value <= inner.bound


def test_wrong_weights_under_a_saturated_output_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt_first_weight(monkeypatch)
    with pytest.raises(VerificationError) as caught:
        compile_model(saturated_net(tmp_path / "sat.onnx"), "x86_64", tmp_path / "art", samples=4)
    assert "in intermediate tensor 'logits'" in str(caught.value)
    assert not (tmp_path / "art").exists()


def test_the_frontier_is_where_the_inputs_stop_moving_values(tmp_path: Path) -> None:
    proto = onnx.load(str(saturated_net(tmp_path / "sat.onnx")))
    feeds = [{"x": np.random.default_rng(i).random((1, 3, 16, 16), np.float32)} for i in range(3)]
    sensitivity = intermediates.tensor_sensitivity(proto, feeds)
    assert sensitivity["y"] == 0.0 and sensitivity["c"] > verify.INPUT_SENSITIVITY
    assert intermediates.frontier(proto, sensitivity, verify.INPUT_SENSITIVITY) == ["logits"]
    exposed = intermediates.with_outputs(proto, ["logits"])
    assert [o.name for o in exposed.graph.output] == ["y", "logits"]
    assert exposed.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
