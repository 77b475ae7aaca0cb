"""`Trainer`: what a training pass gets in its PassContext — the recipe's data, budget and loss.

compress.py builds one per recipe that has a `training:` section. A pass converts its ONNX input
(`to_torch`), trains it with `fit` (holding its own constraint through `after_step` or a
torch parametrization), and exports the result (`to_onnx`, checked under ONNX Runtime):

    trainer = context.require_training("my_pass")
    converted = trainer.to_torch(model)
    trainer.fit(converted.module, stage="my_pass")
    return PassResult(trainer.to_onnx(converted), changes)

`finetune` does those three steps for a pass that only needs its output retrained.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam.compiler.training.config import TrainingConfig
from edgecam.compiler.training.convert import TorchModel, to_onnx, to_torch
from edgecam.compiler.training.data import LabelledData, load_labelled
from edgecam.compiler.training.loop import FitResult, Loss, cross_entropy, fit
from edgecam.preprocessing import Preprocessing

if TYPE_CHECKING:
    import onnx
    import torch

_CHECK_INPUTS = 8  # real inputs the export is compared with torch on


def default_checkpoint_dir() -> Path:
    return Path.home() / ".cache" / "edgecam" / "checkpoints"


@dataclass
class Trainer:
    """The recipe's training settings bound to the model's preprocessing.

    `loss` is the loss every fine-tune of the recipe uses: cross-entropy unless the recipe names a
    teacher (then a distillation loss). `progress` shows a line to the user (the CLI's bar).
    """

    config: TrainingConfig
    preprocessing: Preprocessing
    input_name: str
    base_dir: Path = Path()
    seed: int = 0
    loss: Loss = cross_entropy
    progress: Callable[[str], None] = lambda line: None
    # Loaded data shared by every pass of one recipe run (copies made with dataclasses.replace).
    _data: dict[str, LabelledData | None] = field(default_factory=dict)

    def train_data(self) -> LabelledData:
        if "train" not in self._data:
            self._data["train"] = self._load(self.config.data, "training.data")
        data = self._data["train"]
        assert data is not None
        return data

    def validation_data(self) -> LabelledData | None:
        if "validation" not in self._data:
            config = self.config.validation
            self._data["validation"] = None if config is None else self._load(config, "training.validation")
        return self._data["validation"]

    def to_torch(self, model: onnx.ModelProto) -> TorchModel:
        return to_torch(model)

    def to_onnx(self, converted: TorchModel) -> onnx.ModelProto:
        """Export, checked against the trained module on real training inputs."""
        return to_onnx(converted, self.train_data().inputs[:_CHECK_INPUTS].numpy())

    def fit(
        self,
        module: torch.nn.Module,
        stage: str,
        *,
        epochs: int | None = None,
        lr: float | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> FitResult:
        """Train with the recipe's budget; `stage` names the checkpoint (with a digest of the starting
        weights and the settings, so a rerun of the same recipe resumes and nothing else does)."""
        return fit(
            module,
            self.train_data(),
            self.config,
            epochs=epochs,
            lr=lr,
            validation=self.validation_data(),
            loss=self.loss,
            after_step=after_step,
            checkpoint_path=self.checkpoint_path(module, stage, epochs, lr),
            seed=self.seed,
            progress=lambda line: self.progress(f"{stage}: {line}"),
        )

    def finetune(self, model: onnx.ModelProto, stage: str = "finetune") -> onnx.ModelProto:
        """`model` retrained with the recipe's budget and loss (structure unchanged)."""
        converted = self.to_torch(model)
        self.fit(converted.module, stage)
        return self.to_onnx(converted)

    def checkpoint_path(
        self, module: torch.nn.Module, stage: str, epochs: int | None, lr: float | None
    ) -> Path:
        digest = hashlib.sha256()
        for name, value in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
        settings = self.config.model_dump_json(exclude={"checkpoint_dir"})
        digest.update(f"{stage}|{epochs}|{lr}|{self.seed}|{settings}|{self.loss_name}".encode())
        directory = self.config.checkpoint_dir or default_checkpoint_dir()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stage)
        return Path(directory).expanduser() / f"{safe}-{digest.hexdigest()[:16]}.pt"

    @property
    def loss_name(self) -> str:
        return str(getattr(self.loss, "__qualname__", type(self.loss).__name__))

    def _load(self, config: Any, field_name: str) -> LabelledData:
        self.progress(f"loading {field_name} ({config.kind})")
        return load_labelled(config, field_name, self.preprocessing, self.input_name, self.base_dir)
