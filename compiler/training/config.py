"""The recipe's `training:` section: labelled data and the budget every fine-tune of the recipe uses.

    training:
      data: {kind: fashion_mnist, split: train, limit: 60000}
      validation: {kind: fashion_mnist, split: train, offset: 55000, limit: 5000}
      epochs: 4            # per fine-tune (a pass may ask for its own, e.g. per pruning step)
      batch_size: 128
      lr: 0.001
      patience: 2          # early stop after this many epochs without a better validation top-1

No torch import here: recipes are parsed where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgecam.compiler.datasets import DatasetConfig


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Labelled samples to train on; a set without labels is refused naming `training.data`.
    data: DatasetConfig
    # Early stopping and the kept weights follow top-1 on this set; without it, the training loss.
    validation: DatasetConfig | None = None
    epochs: int = Field(default=3, ge=1, le=10_000)
    batch_size: int = Field(default=128, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    # Epochs without improvement before stopping; None trains every epoch.
    patience: int | None = Field(default=2, ge=1)
    # Mirror images left-right at random (right for clothes, wrong for digits or text).
    hflip: bool = False
    # Where checkpoints go (one file per fine-tune, named by what it trains); default
    # ~/.cache/edgecam/checkpoints. Rerunning an interrupted recipe resumes from them.
    checkpoint_dir: Path | None = None
