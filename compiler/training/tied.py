"""A weight tied to a codebook (Deep Compression's trained weight sharing), as a torch parametrization.

Imported only where a pass trains (torch is the train extra's).
"""

from __future__ import annotations

import numpy as np
import torch


class TiedToCodebook(torch.nn.Module):
    """weight = codebook[indices]; the zero centroid of a pruned layer is held at 0.

    Indexing's backward scatters and adds, so a centroid's gradient is the sum of the gradients of
    the weights in its cluster (Han et al. 2016, eq. 3): the optimizer moves centroids, never a single
    weight, and the layer keeps at most len(codebook) distinct values.
    """

    keep: torch.Tensor
    indices: torch.Tensor

    def __init__(self, codebook: np.ndarray, indices: np.ndarray) -> None:
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.from_numpy(codebook.astype(np.float32)))
        self.register_buffer("keep", torch.from_numpy((codebook != 0).astype(np.float32)))
        self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return (self.codebook * self.keep)[self.indices]

    def codebook_values(self) -> np.ndarray:
        return (self.codebook * self.keep).detach().numpy()

    def index_values(self) -> np.ndarray:
        return self.indices.numpy().astype(np.uint8)
