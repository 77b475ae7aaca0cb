"""The training seam: ONNX → torch → ONNX keeps names and metadata and matches; bad input is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.errors import RecipeError, TrainingError


def _run(model: Any, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": row[None]})[0] for row in inputs])


def test_round_trip_keeps_names_metadata_and_outputs(mlp_path: Path) -> None:
    import onnx

    from edgecam.compiler.training.convert import to_onnx, to_torch

    source = onnx.load(str(mlp_path))
    inputs = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    exported = to_onnx(to_torch(source), inputs)
    assert {n.name for n in exported.graph.node if n.op_type == "Gemm"} == {
        n.name for n in source.graph.node if n.op_type == "Gemm"
    }
    assert {i.name for i in exported.graph.initializer} == {i.name for i in source.graph.initializer}
    meta = {p.key: p.value for p in exported.metadata_props}
    assert meta == {p.key: p.value for p in source.metadata_props}
    np.testing.assert_allclose(_run(exported, inputs), _run(source, inputs), rtol=1e-5, atol=1e-6)


def test_bundled_cnn_round_trip_keeps_layer_names() -> None:
    import onnx

    from edgecam.compiler.training.convert import to_onnx, to_torch
    from edgecam.models.fashion_cnn import onnx_path

    source = onnx.load(str(onnx_path()))
    exported = to_onnx(to_torch(source), np.zeros((2, 1, 28, 28), np.float32))
    names = [n.name for n in source.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.name for n in exported.graph.node if n.op_type in ("Conv", "Gemm")] == names


def test_unconvertible_op_is_named(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("Foo", ["image"], ["logits"], name="my_custom", domain="example.ops")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.ops", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    from edgecam.compiler.training.convert import to_torch

    with pytest.raises(TrainingError, match=r"op 'Foo'.*node 'my_custom'"):
        to_torch(model)


def test_export_that_disagrees_is_refused(mlp_path: Path) -> None:
    import onnx
    import torch

    from edgecam.compiler.training.convert import check_export, to_torch

    source = onnx.load(str(mlp_path))
    converted = to_torch(source)
    with torch.no_grad():
        next(converted.module.parameters()).add_(0.5)  # the torch model moves, the ONNX one does not
    with pytest.raises(TrainingError, match="differs from the trained torch model"):
        check_export(source, converted.module, np.ones((2, 1, 8, 8), np.float32))


def test_unlabelled_training_data_is_refused_by_field(tmp_path: Path, trainer_for: Any) -> None:
    images = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "nolabels.npz", images=images)
    trainer = trainer_for(data={"kind": "npz", "path": str(tmp_path / "nolabels.npz")})
    with pytest.raises(RecipeError, match=r"training\.data .*without a label"):
        trainer.train_data()


def test_recipe_with_a_training_pass_needs_a_training_section() -> None:
    from edgecam.compiler.recipe import parse_recipe

    recipe = {"evaluation": {"kind": "fashion_mnist"}, "passes": [{"kind": "finetune"}]}
    with pytest.raises(RecipeError, match=r"finetune.*training:"):
        parse_recipe(recipe)
