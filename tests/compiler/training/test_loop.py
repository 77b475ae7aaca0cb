"""The loop: learns, is deterministic, resumes after an interrupt, refuses a corrupt checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.errors import TrainingError


def _weights(module: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def test_training_learns_and_is_deterministic(mlp_path: Path, trainer_for: Any, tmp_path: Path) -> None:
    import onnx

    from edgecam.compiler.training.loop import accuracy

    trainer = trainer_for(patience=None)
    runs = []
    for attempt in range(2):
        converted = trainer.to_torch(onnx.load(str(mlp_path)))
        before = accuracy(converted.module, trainer.train_data())
        result = trainer.fit(converted.module, f"run{attempt}")  # own checkpoint: no resume between them
        runs.append(_weights(converted.module))
        assert result.history[-1].loss < result.history[0].loss
        assert accuracy(converted.module, trainer.train_data()) > max(before, 0.9)
    for name, value in runs[0].items():
        np.testing.assert_array_equal(value, runs[1][name])


def test_resume_after_interrupt_continues_from_the_checkpoint(mlp_path: Path, trainer_for: Any) -> None:
    import onnx

    trainer = trainer_for(patience=None, epochs=3)
    lines: list[str] = []

    def interrupt_in_epoch_2(line: str) -> None:
        lines.append(line)
        if "epoch 2/3" in line:
            raise KeyboardInterrupt

    interrupted = trainer_for(patience=None, epochs=3)
    interrupted.progress = interrupt_in_epoch_2
    module = interrupted.to_torch(onnx.load(str(mlp_path))).module
    path = interrupted.checkpoint_path(module, "resume", None, None)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(module, "resume")
    assert path.exists() and any("epoch 1/3" in line and "ETA" in line for line in lines)

    resumed_module = trainer.to_torch(onnx.load(str(mlp_path))).module
    resumed = trainer.fit(resumed_module, "resume")
    assert resumed.resumed_from == 1 and len(resumed.history) == 3

    trainer_for(patience=None, epochs=3, checkpoint_dir=str(path.parent / "other"))
    straight_trainer = trainer_for(patience=None, epochs=3, checkpoint_dir=str(path.parent.parent / "fresh"))
    straight = straight_trainer.to_torch(onnx.load(str(mlp_path))).module
    straight_trainer.fit(straight, "resume")
    for name, value in _weights(straight).items():
        np.testing.assert_array_equal(value, _weights(resumed_module)[name])


def test_finished_checkpoint_returns_without_training(mlp_path: Path, trainer_for: Any) -> None:
    import onnx

    trainer = trainer_for(patience=None, epochs=2)
    first = trainer.to_torch(onnx.load(str(mlp_path))).module
    trainer.fit(first, "done")
    calls: list[str] = []
    trainer.progress = calls.append
    again = trainer.to_torch(onnx.load(str(mlp_path))).module
    result = trainer.fit(again, "done")
    assert result.resumed_from == 2 and not [c for c in calls if "epoch" in c]
    for name, value in _weights(first).items():
        np.testing.assert_array_equal(value, _weights(again)[name])


def test_corrupt_checkpoint_is_refused_by_name(mlp_path: Path, trainer_for: Any) -> None:
    import onnx

    trainer = trainer_for(epochs=1)
    module = trainer.to_torch(onnx.load(str(mlp_path))).module
    path = trainer.checkpoint_path(module, "corrupt", None, None)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(TrainingError, match=rf"checkpoint {path} is corrupt"):
        trainer.fit(module, "corrupt")


def test_early_stop_keeps_the_best_epoch(mlp_path: Path, trainer_for: Any, labelled_npz: Path) -> None:
    import onnx

    # A learning rate this large diverges after the first epochs: validation stops improving.
    validation = {"kind": "npz", "path": str(labelled_npz), "limit": 128}
    trainer = trainer_for(epochs=12, patience=1, lr=5.0, optimizer="sgd", validation=validation)
    module = trainer.to_torch(onnx.load(str(mlp_path))).module
    result = trainer.fit(module, "early")
    assert result.stopped_early and len(result.history) < 12
    from edgecam.compiler.training.loop import accuracy

    best = result.history[result.best_epoch - 1].validation
    assert accuracy(module, trainer.validation_data()) == pytest.approx(best)
