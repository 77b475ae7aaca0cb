"""Labelled training data from the recipe's data sets, as tensors the model takes.

Samples go through the model's own preprocessing (`edgecam.preprocessing`), exactly as the camera
server and the evaluation do, so the network trains on what it will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecam.compiler.datasets import DatasetConfig, labels_of, load_dataset, to_feeds
from edgecam.compiler.errors import RecipeError
from edgecam.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch


@dataclass
class LabelledData:
    """`inputs` float32 [N, ...] (one model input per row) and `labels` int64 [N]."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_labelled(
    config: DatasetConfig, field: str, preprocessing: Preprocessing, input_name: str, base_dir: Path
) -> LabelledData:
    """The samples `config` names, preprocessed; RecipeError naming `field` when any has no label."""
    import torch

    samples = load_dataset(config, base_dir)
    labels = labels_of(samples)
    if labels is None:
        unlabelled = sum(sample.label is None for sample in samples)
        raise RecipeError(
            f"{field} ({config.kind}) has {unlabelled} of {len(samples)} samples without a label; training "
            "needs a labelled data set (fashion_mnist, or an npz with `labels`)"
        )
    feeds = to_feeds(samples, preprocessing, input_name)
    inputs = np.concatenate([feed[input_name] for feed in feeds], axis=0).astype(np.float32)
    return LabelledData(torch.from_numpy(inputs), torch.from_numpy(labels))
