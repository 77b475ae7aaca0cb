"""The bundled default model: a small CNN trained by edgecam on Fashion-MNIST.

`fashion_cnn.onnx` carries its preprocessing, postprocessing and labels in ONNX metadata, so the
compiler and the server need nothing else. `samples.npz` holds the first 1,000 test images (MIT
licence) so the synthetic camera and the tests run without the Debian dataset. No torch or onnx
import here: the camera server imports this module.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

MODEL_NAME = "fashion_cnn"
LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DATASET_ROOT = Path("/usr/share/datasets/fashion-mnist")
_HERE = Path(__file__).resolve().parent


def onnx_path() -> Path:
    return _HERE / "fashion_cnn.onnx"


def load_samples() -> tuple[np.ndarray, np.ndarray]:
    """The committed test images (uint8 [N,28,28]) and labels (int64 [N])."""
    with np.load(_HERE / "samples.npz") as data:
        return data["images"], data["labels"]


def load_split(split: str = "t10k", root: Path = DATASET_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `train` or `t10k` images (uint8 [N,28,28]) and labels from the idx files."""
    images_file = root / f"{split}-images-idx3-ubyte.gz"
    labels_file = root / f"{split}-labels-idx1-ubyte.gz"
    if not images_file.exists():
        raise FileNotFoundError(
            f"{images_file} is missing; install the data set: apt-get install dataset-fashion-mnist"
        )
    with gzip.open(images_file, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels
