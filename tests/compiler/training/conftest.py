"""A tiny labelled task and an ONNX model for it, small enough that a training test takes seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Not importorskip for onnx2torch: importing it bare fails where torchvision cannot load; the seam
# imports it through its guard (compiler/training/convert.py).
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("the train extra (torch, onnx2torch) is not installed", allow_module_level=True)

SIZE = 8


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise plus a bright bar whose position (left/right half, top/bottom) is the class (4 classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    images = rng.integers(0, 60, (count, SIZE, SIZE)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        rows = slice(0, SIZE // 2) if label < 2 else slice(SIZE // 2, SIZE)
        cols = slice(0, SIZE // 2) if label % 2 == 0 else slice(SIZE // 2, SIZE)
        image[rows, cols] += 150
    return images, labels.astype(np.int64)


def build_mlp(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    """Flatten → Gemm(64→hidden) → Relu → Gemm(hidden→4), exported by torch with batch 1 (as a
    camera model is) and edgecam metadata."""
    import onnx
    import torch

    from edgecam.preprocessing import Preprocessing

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
    )
    torch.onnx.export(
        net.eval(),
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    spec = Preprocessing(height=SIZE, width=SIZE, color="GRAY", layout="NCHW")
    onnx.helper.set_model_props(model, {"edgecam.preprocessing": spec.model_dump_json(), "edgecam.x": "kept"})
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return build_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def labelled_npz(tmp_path: Path) -> Path:
    images, labels = make_images(512, seed=3)
    path = tmp_path / "train.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture
def trainer_for(tmp_path: Path, labelled_npz: Path) -> Any:
    """A Trainer on the npz task with checkpoints in tmp_path/ckpt; keyword arguments set its config."""
    from edgecam.compiler.training.config import TrainingConfig
    from edgecam.compiler.training.trainer import Trainer
    from edgecam.preprocessing import Preprocessing

    def make(**settings: Any) -> Trainer:
        config = TrainingConfig.model_validate(
            {
                "data": {"kind": "npz", "path": str(labelled_npz), "limit": 512},
                "epochs": 3,
                "batch_size": 64,
                "lr": 0.01,
                "checkpoint_dir": str(tmp_path / "ckpt"),
                **settings,
            }
        )
        spec = Preprocessing(height=SIZE, width=SIZE, color="GRAY", layout="NCHW")
        return Trainer(config, spec, "image", seed=1)

    return make
