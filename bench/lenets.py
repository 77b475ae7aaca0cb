"""LeNet-300-100 and LeNet-5 (the Caffe variant Han et al. compress) as torch modules, trained on
Fashion-MNIST with edgecam's training loop and exported to ONNX with the bundled CNN's metadata
(preprocessing, labels), so the compiler, recipes and server take them like the bundled model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NETWORKS = ("lenet_300_100", "lenet5")


def build(name: str) -> torch.nn.Module:
    from torch import nn

    if name == "lenet_300_100":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
        )
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
        )  # fmt: skip
    raise ValueError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}")


def train_and_export(name: str, out: Path, epochs: int, seed: int = 0) -> Path:
    """Train `name` on the 60,000 training images (the last 5,000 for early stopping) and export it."""
    import json

    import onnx
    import torch

    from edgecam.compiler.training.config import TrainingConfig
    from edgecam.compiler.training.data import load_labelled
    from edgecam.compiler.training.loop import fit
    from edgecam.models.fashion_cnn import LABELS
    from edgecam.models.fashion_cnn.train import POSTPROCESSING, PREPROCESSING

    config = TrainingConfig.model_validate(
        {
            "data": {"kind": "fashion_mnist", "split": "train", "limit": 55000},
            "validation": {"kind": "fashion_mnist", "split": "train", "offset": 55000, "limit": 5000},
            "epochs": epochs,
            "lr": 1e-3,
            "patience": 3,
        }
    )
    train = load_labelled(config.data, "training.data", PREPROCESSING, "image", Path())
    assert config.validation is not None
    validation = load_labelled(config.validation, "training.validation", PREPROCESSING, "image", Path())
    torch.manual_seed(seed)
    net = build(name)
    fit(net, train, config, validation=validation, seed=seed, progress=every(30), on_epoch=print)
    torch.onnx.export(
        net.eval(), (torch.zeros(1, 1, 28, 28),), str(out), input_names=["image"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    model = onnx.load(str(out))
    onnx.helper.set_model_props(
        model,
        {
            "edgecam.model_name": name,
            "edgecam.preprocessing": PREPROCESSING.model_dump_json(),
            "edgecam.postprocessing": POSTPROCESSING.model_dump_json(),
            "edgecam.labels": json.dumps(LABELS),
        },
    )
    onnx.save(model, str(out))
    return out


def every(seconds: float) -> Callable[[str], None]:
    """A progress callback that prints at most one line per `seconds` (log lines, not a bar)."""
    import time

    last = [0.0]

    def show(line: str) -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            print(line, flush=True)

    return show
