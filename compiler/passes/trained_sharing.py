"""`kind: trained_sharing` — weight sharing with centroid fine-tuning (Deep Compression, Han et al. 2016,
stage 2 with retraining), stored in the same Huffman-coded form as `kind: weight_sharing`.

Each selected layer is clustered exactly as `weight_sharing` does (the same k-means, 0.0 an exact
centroid of a pruned layer). Then the network is retrained with every such weight tied to its
centroid: the layer's weight is `codebook[indices]` (a torch parametrization), so the gradient of a
centroid is the sum of the gradients of the weights in its cluster, and the optimizer moves centroids,
never single weights. The zero centroid is held at 0, so pruned weights stay pruned. Biases and layers
that are not shared train freely. The trained codebooks are coded with the indices as before
(edgecam/weight_codec.py) and travel in the artifact's weights file.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from edgecam import weight_codec
from edgecam.compiler.errors import TrainingError
from edgecam.compiler.passes.backends.onnx import OnnxGraph
from edgecam.compiler.passes.base import PassContext, PassResult, register_pass
from edgecam.compiler.passes.weight_sharing import (
    SHARED_OPS,
    WeightSharingConfig,
    WeightSharingPass,
    _layer_changes,
    _Shared,
    coded_changes,
    share,
    weight_coding,
)
from edgecam.compiler.training.layers import torch_layers


class TrainedSharingConfig(WeightSharingConfig):
    kind: Literal["trained_sharing"] = "trained_sharing"  # type: ignore[assignment]
    trains: ClassVar[bool] = True
    # Centroid fine-tuning; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)

    @field_validator("bias_correction")
    @classmethod
    def _no_bias_correction(cls, value: bool) -> bool:
        if value:
            raise ValueError("trained_sharing retrains the biases itself; remove bias_correction")
        return value


@register_pass
class TrainedSharingPass(WeightSharingPass):
    config_type = TrainedSharingConfig  # type: ignore[assignment]

    def apply(self, model: Any, context: PassContext) -> PassResult:
        from torch.nn.utils import parametrize

        from edgecam.compiler.training.tied import TiedToCodebook

        config: TrainedSharingConfig = self.config  # type: ignore[assignment]
        trainer = context.require_training(config.kind)
        graph = OnnxGraph.copy_of(model)
        selected, skipped = self._select(graph)
        converted = trainer.to_torch(model)
        shapes = {layer.weight: graph.weight(layer.weight).shape for layer in selected}
        layers, not_trained = torch_layers(converted, selected, shapes)
        skipped |= not_trained
        tied: dict[str, tuple[TiedToCodebook, np.ndarray, int]] = {}
        for layer in layers:
            values = graph.weight(layer.onnx.weight)
            bits = self._bits_for(layer.name)
            shared = share(values, bits, seed=context.seed, max_iter=config.max_iter)
            tie = TiedToCodebook(shared.codebook, shared.indices)
            parametrize.register_parametrization(layer.module, "weight", tie, unsafe=True)
            tied[layer.name] = (tie, values, bits)
        context.progress(f"fine-tuning the centroids of {len(tied)} layers")
        fit = trainer.fit(converted.module, config.kind, epochs=config.epochs, lr=config.lr)
        for layer in layers:
            parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
        exported = trainer.to_onnx(converted)
        out = OnnxGraph(exported)
        by_name = {layer.name: layer for layer in out.weighted_layers(SHARED_OPS)}
        entries: dict[str, Any] = {}
        encoded: dict[str, bytes] = {}
        for name, (tie, values, bits) in tied.items():
            codebook = tie.codebook_values().astype(values.dtype)
            indices = tie.index_values()
            blob = weight_codec.encode(indices, codebook)
            weight = by_name[name].weight
            # The artifact stores the coding instead of the initializer: they must be the same numbers.
            if not np.array_equal(weight_codec.decode(blob), out.weight(weight)):
                raise TrainingError(f"trained_sharing: {name!r}: the exported weights differ from the coding")
            encoded[weight] = blob
            entries[name] = _layer_changes(weight, bits, values, _Shared(codebook, indices, blob))
        changes = {**coded_changes(entries, skipped), "training": fit.summary()}
        return PassResult(model=exported, changes=changes, coding=weight_coding(encoded))
