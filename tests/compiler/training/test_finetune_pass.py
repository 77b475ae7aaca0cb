"""`kind: finetune` inside a recipe run: ONNX in, trained ONNX out, measured and gated like any pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecam.compiler.compress import measure_recipe
from edgecam.compiler.recipe import parse_recipe


def test_finetune_pass_in_a_recipe_improves_top1(mlp_path: Path, labelled_npz: Path, tmp_path: Path) -> None:
    import onnx

    data = {"kind": "npz", "path": str(labelled_npz), "limit": 512}
    recipe = parse_recipe(
        {
            "evaluation": {**data, "limit": 256},
            "training": {
                "data": data,
                "epochs": 2,
                "batch_size": 64,
                "lr": 0.01,
                "checkpoint_dir": str(tmp_path / "ckpt"),
            },
            "passes": [{"kind": "prune", "sparsity": 0.5}, {"kind": "finetune"}],
            "max_accuracy_drop": 100,
        }
    )
    lines: list[str] = []
    measured = measure_recipe(mlp_path, recipe, tmp_path, lambda message, done, total: lines.append(message))
    original, _, tuned = measured.report.steps
    assert tuned.top1 is not None and original.top1 is not None and tuned.top1 > original.top1 + 0.3
    assert tuned.changes["training"]["epochs_run"] == 2
    assert any("finetune: epoch 2/2" in line for line in lines)
    source = onnx.load(str(mlp_path))
    assert [n.name for n in measured.model.graph.node] == [n.name for n in source.graph.node]
    assert dict((p.key, p.value) for p in measured.model.metadata_props) == dict(
        (p.key, p.value) for p in source.metadata_props
    )
    assert np.isfinite(tuned.top1)
