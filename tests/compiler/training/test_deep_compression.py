"""Pruning with retraining and trained weight sharing: masks stay zero, centroids stay shared, the
coded weights reach the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.passes.backends.onnx import OnnxGraph


def _apply(config: dict[str, Any], model: Any, trainer: Any, tmp_path: Path) -> Any:
    context = PassContext(calibration=[], work_dir=tmp_path, training=trainer, seed=0)
    return create_pass(parse_pass_config(config)).apply(model, context)


def _gemm_weights(model: Any) -> dict[str, np.ndarray]:
    graph = OnnxGraph(model)
    return {layer.name: graph.weight(layer.weight) for layer in graph.weighted_layers(("Gemm",))}


def _top1(model: Any, trainer: Any) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    data = trainer.train_data()
    inputs, labels = data.inputs.numpy(), data.labels.numpy()
    hits = [
        session.run(None, {"image": row[None]})[0].argmax() == label
        for row, label in zip(inputs, labels, strict=True)
    ]
    return float(np.mean(hits))


def test_masks_stay_zero_through_retraining(mlp_path: Path, trainer_for: Any, tmp_path: Path) -> None:
    import onnx

    trainer = trainer_for(patience=None, epochs=2)
    source = onnx.load(str(mlp_path))
    config = {"kind": "iterative_prune", "sparsity": 0.75, "steps": 2, "scope": "per_layer"}
    result = _apply(config, source, trainer, tmp_path)
    before, after = _gemm_weights(source), _gemm_weights(result.model)
    for name, values in after.items():
        # Retraining moved the kept weights, yet exactly the pruned share is still exactly zero.
        assert np.count_nonzero(values == 0) == round(0.75 * values.size), name
        kept = values != 0
        assert not np.allclose(values[kept], before[name][kept])
    assert [r["sparsity"] for r in result.changes["rounds"]] == [0.375, 0.75]
    assert result.changes["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert _top1(result.model, trainer) > 0.9


def test_obd_ranks_by_curvature_not_magnitude(mlp_path: Path, trainer_for: Any, tmp_path: Path) -> None:
    import onnx

    trainer = trainer_for(patience=None, epochs=1)
    source = onnx.load(str(mlp_path))
    pruned = {}
    for criterion in ("magnitude", "obd"):
        config = {"kind": "iterative_prune", "sparsity": 0.5, "steps": 1, "criterion": criterion}
        pruned[criterion] = _gemm_weights(_apply(config, source, trainer, tmp_path).model)
    masks = {c: np.concatenate([(w == 0).ravel() for w in pruned[c].values()]) for c in pruned}
    assert masks["obd"].sum() == masks["magnitude"].sum()
    assert (masks["obd"] != masks["magnitude"]).any()


def test_obd_hessian_diagonal_matches_the_exact_one(trainer_for: Any) -> None:
    import torch

    from edgecam.compiler.passes.iterative_prune import hessian_diagonal

    trainer = trainer_for()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    weight, bias = module[1].weight, module[1].bias
    data = trainer.train_data()

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(data.inputs.flatten(1), w, bias.detach())
        return torch.nn.functional.cross_entropy(logits, data.labels)

    # A softmax layer: its Hessian is exactly Gauss-Newton, so the estimate must follow the true diagonal.
    exact = torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(weight.numel(), -1).diagonal()
    estimate = hessian_diagonal(module, [weight], trainer, len(data))[0].reshape(-1)
    assert (
        torch.corrcoef(torch.stack([estimate, exact]))[0, 1] > 0.85
    )  # Monte Carlo over labels: 0.92 here, Hutchinson with 200 probes 0.31
    assert float(estimate.sum() / exact.sum()) == pytest.approx(1.0, rel=0.1)


def test_centroids_stay_shared_after_fine_tuning(mlp_path: Path, trainer_for: Any, tmp_path: Path) -> None:
    import onnx

    from edgecam import weight_codec
    from edgecam.compiler.passes.weight_sharing import share

    trainer = trainer_for(patience=None, epochs=2)
    pruned = _apply(
        {"kind": "iterative_prune", "sparsity": 0.6, "steps": 1}, onnx.load(str(mlp_path)), trainer, tmp_path
    ).model
    result = _apply({"kind": "trained_sharing", "bits": 2}, pruned, trainer, tmp_path)
    before, after = _gemm_weights(pruned), _gemm_weights(result.model)
    graph = OnnxGraph(result.model)
    for layer in graph.weighted_layers(("Gemm",)):
        values = after[layer.name]
        assert len(np.unique(values)) <= 4  # 2 bits: the zero centroid and three trained ones
        np.testing.assert_array_equal(values == 0, before[layer.name] == 0)  # pruned stay pruned
        np.testing.assert_array_equal(weight_codec.decode(result.coding.encoded[layer.weight]), values)
        untrained = share(before[layer.name], 2).codebook
        assert not np.allclose(np.unique(values), untrained)  # the centroids were fine-tuned
    assert result.changes["coded_bytes"] < result.changes["raw_bytes"] / 5
    assert _top1(result.model, trainer) > 0.85


def test_deep_compression_recipe_writes_a_coded_artifact(
    mlp_path: Path, labelled_npz: Path, tmp_path: Path
) -> None:
    import json

    from edgecam.compiler.compress import compress
    from edgecam.compiler.recipe import parse_recipe

    data = {"kind": "npz", "path": str(labelled_npz), "limit": 512}
    recipe = parse_recipe(
        {
            "evaluation": data,
            "training": {
                "data": data,
                "epochs": 1,
                "batch_size": 64,
                "lr": 0.01,
                "checkpoint_dir": str(tmp_path / "ckpt"),
            },
            "passes": [
                {"kind": "iterative_prune", "sparsity": 0.7, "steps": 2},
                {"kind": "trained_sharing", "bits": 3},
            ],
            "max_accuracy_drop": 10,
        }
    )
    from edgecam.compiler.evaluate import MeasureOptions

    # No per-step TVM build or long timing: the training and the artifact are what this tests.
    options = MeasureOptions(tvm=False, runs=2, warmup=0)
    artifact, report = compress(mlp_path, recipe, tmp_path, tmp_path / "art", options=options)
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert (tmp_path / "art" / "weights.ecw").exists()
    assert report.steps[-1].weight_bytes < report.steps[0].weight_bytes / 4
    assert report.gate.passed and manifest["compression"]
    del artifact
    from edgecam import weight_codec
    from edgecam.server.runtime import load_model

    blobs = weight_codec.read_bundle(tmp_path / "art" / "weights.ecw")
    assert manifest["coded_weights"]["codec"] == weight_codec.codec_of(blobs.values())
    load_model(tmp_path / "art")  # the camera decodes the codec the manifest names


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"kind": "iterative_prune", "sparsity": 1.0}, "sparsity"),
        ({"kind": "iterative_prune", "criterion": "hessian"}, "criterion"),
        ({"kind": "iterative_prune", "steps": 0}, "steps"),
        ({"kind": "trained_sharing", "bias_correction": True}, "bias_correction"),
        ({"kind": "trained_sharing", "bits": 9}, "bits"),
    ],
)
def test_invalid_configs_are_refused_by_field(config: dict[str, Any], field: str) -> None:
    from edgecam.compiler.errors import RecipeError
    from edgecam.compiler.recipe import parse_recipe

    recipe = {"evaluation": {"kind": "fashion_mnist"}, "training": {"data": {"kind": "fashion_mnist"}}}
    with pytest.raises(RecipeError, match=field):
        parse_recipe({**recipe, "passes": [config]})


def test_a_layer_pattern_matching_nothing_is_refused(
    mlp_path: Path, trainer_for: Any, tmp_path: Path
) -> None:
    import onnx

    from edgecam.compiler.errors import PassError

    with pytest.raises(PassError, match="'/nope'"):
        _apply(
            {"kind": "iterative_prune", "layers": ["/nope"]},
            onnx.load(str(mlp_path)),
            trainer_for(),
            tmp_path,
        )
