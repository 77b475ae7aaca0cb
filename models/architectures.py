"""Network architectures by name, for the `distill` pass's `architecture:` student (torch, train extra).

Each entry builds a fresh, untrained torch module from a width multiplier (1.0: the bundled model's
own widths). Nothing here imports torch until an architecture is built: the camera server imports
`edgecam.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def fashion_cnn(width: float = 1.0) -> torch.nn.Module:
    """The bundled Fashion-MNIST CNN (input [N,1,28,28], 10 classes) with every block's channels
    scaled by `width` (at least 1 each); MACs fall about as width²."""
    from edgecam.models.fashion_cnn.train import WIDTHS, build_net

    a, b, c, d, e = (max(1, round(channels * width)) for channels in WIDTHS)
    return build_net((a, b, c, d, e))


ARCHITECTURES: dict[str, Callable[[float], torch.nn.Module]] = {"fashion_cnn": fashion_cnn}


def build(name: str, width: float = 1.0) -> torch.nn.Module:
    """A fresh module of architecture `name`; ValueError naming the known ones for another name."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](width)
