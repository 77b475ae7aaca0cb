"""Evaluation and calibration data for recipes: typed configs (a union keyed by `kind`) → samples.

A sample is what a camera would deliver (an OpenCV image, uint8 HxW gray or HxWx3 BGR) plus its
label when one is known; the model's own preprocessing turns it into an input, exactly as the
server does. Unlabelled sets (photos, video frames) still measure agreement with the original.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgecam.compiler.errors import RecipeError
from edgecam.preprocessing import Preprocessing, preprocess


@dataclass(frozen=True)
class Sample:
    image: np.ndarray
    label: int | None = None


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=1000, ge=1)


class FashionMnistData(_Data):
    """Debian's `dataset-fashion-mnist`: `train` for calibration, `test` for evaluation."""

    kind: Literal["fashion_mnist"]
    split: Literal["train", "test"] = "test"
    offset: int = Field(default=0, ge=0)


class NpzData(_Data):
    """An .npz with `images` uint8 [N,H,W(,3)] and optional `labels` int [N] (e.g. the bundled samples)."""

    kind: Literal["npz"]
    path: Path


class ImagesData(_Data):
    """Image files matched by glob patterns (sorted); no labels."""

    kind: Literal["images"]
    paths: list[str] = Field(min_length=1)


class SkimageData(_Data):
    """scikit-image's bundled photographs (CC0/public domain); no labels."""

    kind: Literal["skimage"]


class VideoData(_Data):
    """Frames of a video file from frame `start` on, every `every`-th one; no labels. Two sets from one
    video (calibration and evaluation) stay disjoint by `start`: later footage of the same camera."""

    kind: Literal["video"]
    path: Path
    every: int = Field(default=1, ge=1)
    start: int = Field(default=0, ge=0)


class ConcatData(BaseModel):
    """Several sets one after another (e.g. photos and video frames for an unlabelled check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["concat"]
    parts: list[DatasetConfig] = Field(min_length=1)


DatasetConfig = Annotated[
    FashionMnistData | NpzData | ImagesData | SkimageData | VideoData | ConcatData,
    Field(discriminator="kind"),
]
ConcatData.model_rebuild()


def load_dataset(config: DatasetConfig, base_dir: Path = Path()) -> list[Sample]:
    """Read the samples a config names; relative paths are relative to `base_dir` (the recipe's)."""
    if isinstance(config, ConcatData):
        return [s for part in config.parts for s in load_dataset(part, base_dir)]
    loaders = {
        "fashion_mnist": _fashion_mnist,
        "npz": _npz,
        "images": _images,
        "skimage": _skimage,
        "video": _video,
    }
    samples = loaders[config.kind](config, base_dir)  # type: ignore[operator]
    if not samples:
        raise RecipeError(f"data set {config.model_dump(mode='json')} yielded no samples")
    return samples[: config.limit]


def to_feeds(samples: Sequence[Sample], spec: Preprocessing, input_name: str) -> list[dict[str, np.ndarray]]:
    return [{input_name: preprocess(sample.image, spec)} for sample in samples]


def labels_of(samples: Sequence[Sample]) -> np.ndarray | None:
    """Labels as an array, or None unless every sample has one."""
    if not samples or any(s.label is None for s in samples):
        return None
    return np.asarray([s.label for s in samples], dtype=np.int64)


def _fashion_mnist(config: FashionMnistData, base_dir: Path) -> list[Sample]:
    from edgecam.models.fashion_cnn import load_split

    try:
        images, labels = load_split("train" if config.split == "train" else "t10k")
    except FileNotFoundError as exc:
        raise RecipeError(str(exc)) from exc
    end = config.offset + config.limit
    return [
        Sample(img, int(lbl))
        for img, lbl in zip(images[config.offset : end], labels[config.offset : end], strict=True)
    ]


def _resolve(path: Path, base_dir: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else base_dir / path


def _npz(config: NpzData, base_dir: Path) -> list[Sample]:
    path = _resolve(config.path, base_dir)
    if not path.is_file():
        raise RecipeError(f"npz data set {path} does not exist")
    with np.load(path) as data:
        if "images" not in data:
            raise RecipeError(f"{path} must hold an array 'images'; it has {sorted(data.files)}")
        images = np.asarray(data["images"], np.uint8)
        labels = data["labels"] if "labels" in data else [None] * len(images)
    return [Sample(img, None if lbl is None else int(lbl)) for img, lbl in zip(images, labels, strict=True)]


def _images(config: ImagesData, base_dir: Path) -> list[Sample]:
    import cv2

    files = sorted({f for pattern in config.paths for f in glob.glob(str(_resolve(Path(pattern), base_dir)))})
    samples = []
    for name in files[: config.limit]:
        image = cv2.imread(name, cv2.IMREAD_COLOR)
        if image is None:
            raise RecipeError(f"{name} is not an image OpenCV can read")
        samples.append(Sample(image))
    if not samples:
        raise RecipeError(f"no image files match {config.paths}")
    return samples


def _skimage(config: SkimageData, base_dir: Path) -> list[Sample]:
    try:
        from skimage import data
    except ImportError as exc:
        raise RecipeError("the `skimage` data set needs scikit-image: pip install scikit-image") from exc
    samples = []
    for name in data.__all__:
        loader = getattr(data, name)
        if name in {"download_all", "lbp_frontal_face_cascade_filename"} or not callable(loader):
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # some loaders need optional downloads (pooch) that are not available offline
            continue
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 32:
            continue
        if image.ndim == 3:
            if image.shape[2] not in (3, 4):
                continue
            image = np.ascontiguousarray(image[:, :, 2::-1])  # RGB(A) → BGR, the camera's order
        samples.append(Sample(image))
    return samples


def _video(config: VideoData, base_dir: Path) -> list[Sample]:
    import cv2

    path = _resolve(config.path, base_dir)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise RecipeError(f"video {path} cannot be opened")
    samples: list[Sample] = []
    index = 0
    try:
        while len(samples) < config.limit:
            ok, frame = capture.read()
            if not ok:
                break
            if index >= config.start and (index - config.start) % config.every == 0:
                samples.append(Sample(frame))
            index += 1
    finally:
        capture.release()
    return samples
