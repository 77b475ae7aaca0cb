"""A recipe that trains, run where the train extra is missing, is refused by name with the fix."""

from __future__ import annotations

import pytest

from edgecam.compiler import training
from edgecam.compiler.errors import TrainingError


def test_a_missing_training_module_is_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    training.require_train_extra("pass 'finetune'")  # installed here: no error
    monkeypatch.setattr(training, "_TRAIN_MODULES", ("torch", "edgecam_no_such_module"))
    with pytest.raises(TrainingError) as caught:
        training.require_train_extra("pass 'finetune'")
    message = str(caught.value)
    assert "pass 'finetune'" in message and "edgecam_no_such_module" in message
    assert "pip install 'edgecam[train]'" in message and "torch," not in message
