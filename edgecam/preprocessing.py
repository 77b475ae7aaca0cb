"""How a camera frame becomes a model input. Stored in the artifact; applied by server and client alike."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field


class Preprocessing(BaseModel):
    """Frame → tensor recipe: resize, colour conversion, scale, normalise, layout, batch of one."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color: Literal["GRAY", "RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3


def preprocess(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Turn an OpenCV image (HxW gray or HxWx3 BGR, uint8) into a float32 batch of one."""
    import cv2  # lazy: the compiler CLI and tests import this module without needing frames

    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC image with 1, 3 or 4 channels, got shape {image.shape}")
    image = _convert_color(image, spec.color, cv2)
    if image.shape[:2] != (spec.height, spec.width):
        # INTER_AREA is the right filter when shrinking, the common camera case.
        image = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[:, :, None]
    x: np.ndarray = image.astype(np.float32) * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None, ...], dtype=np.float32)


def _convert_color(image: np.ndarray, color: str, cv2: object) -> np.ndarray:
    channels = image.shape[2]
    if channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # type: ignore[attr-defined]
        channels = 3
    if color == "GRAY":
        if channels == 1:
            return image
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]  # type: ignore[attr-defined]
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)  # type: ignore[attr-defined]
    if color == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # type: ignore[attr-defined]
    return image
