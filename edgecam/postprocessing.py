"""Model output → ranked labels. Stored in the artifact next to the preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field


class Postprocessing(BaseModel):
    """Classification head: which output holds the scores and whether they still need a softmax."""

    output: str | None = None  # None: the model's first output
    apply_softmax: bool = False
    top_k: int = Field(default=5, gt=0)


@dataclass(frozen=True)
class Ranked:
    index: int
    label: str
    score: float


def top_k(scores: np.ndarray, labels: list[str], spec: Postprocessing, k: int | None = None) -> list[Ranked]:
    """The k best classes of a batch-of-one score vector, best first."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if spec.apply_softmax:
        shifted = np.exp(flat - flat.max())
        flat = shifted / shifted.sum()
    k = min(k or spec.top_k, flat.size)
    best = np.argpartition(-flat, k - 1)[:k]
    best = best[np.argsort(-flat[best], kind="stable")]
    return [Ranked(int(i), labels[i] if i < len(labels) else str(int(i)), float(flat[i])) for i in best]
