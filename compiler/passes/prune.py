"""`kind: prune` — unstructured magnitude pruning (Han et al., "Learning both Weights and Connections
for Efficient Neural Networks", 2015): the smallest-|w| weights of Conv/Gemm/MatMul layers become 0.

The graph keeps its shape: the zeros pay off once a later step codes them (sparse storage, weight
sharing, compression of the artifact) or a sparse kernel uses them. Biases are never pruned: they are
few and each one shifts a whole output channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgecam.compiler.passes.backends.onnx import LayerSelection, OnnxGraph, check_patterns, select_weights
from edgecam.compiler.passes.base import CompressionPass, PassContext, PassResult, register_pass
from edgecam.compiler.passes.bias_correction import CorrectsBias

PRUNED_OPS = ("Conv", "Gemm", "MatMul")


class PruneConfig(CorrectsBias):
    kind: Literal["prune"] = "prune"
    # Fraction of the selected weights set to zero (per layer, or over all of them for `global`).
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    # per_layer: every layer loses `sparsity` of its weights; global: one |w| threshold over all selected
    # layers, so layers with many small weights lose more (Han et al.'s setting for large layers).
    scope: Literal["per_layer", "global"] = "per_layer"
    # fnmatch patterns on layer names (node name, else its first output); a pattern matching no layer is
    # refused so a typo does not silently prune nothing.
    layers: tuple[str, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[str, ...] = ()
    # Layers whose weight has fewer elements than this are left dense (e.g. the first conv of a CNN).
    min_params: int = Field(default=0, ge=0)


@dataclass
class _Target:
    layer: str
    weight: str
    values: np.ndarray


@register_pass
class PrunePass(CompressionPass[PruneConfig]):
    config_type = PruneConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        targets, skipped = self._select(graph)
        if self.config.scope == "global":
            masks = _global_masks([t.values for t in targets], self.config.sparsity)
        else:
            masks = [_smallest_mask(t.values, self.config.sparsity) for t in targets]
        layers: dict[str, Any] = {}
        for target, mask in zip(targets, masks, strict=True):
            pruned = np.where(mask, np.zeros((), target.values.dtype), target.values)
            graph.set_weight(target.weight, pruned)
            zeros = int(np.count_nonzero(pruned == 0))
            layers[target.layer] = {
                "weight": target.weight,
                "params": int(pruned.size),
                "zeros": zeros,
                "sparsity": round(zeros / pruned.size, 6),
            }
        total = sum(entry["params"] for entry in layers.values())
        zeros = sum(entry["zeros"] for entry in layers.values())
        changes = {
            "scope": self.config.scope,
            "layers": layers,
            "skipped": skipped,
            "params": total,
            "zeros": zeros,
            "sparsity": round(zeros / total, 6) if total else 0.0,
        }
        if (correction := self.config.corrected(model, graph.model, context)) is not None:
            changes["bias_correction"] = correction
        return PassResult(model=graph.model, changes=changes)

    def _select(self, graph: OnnxGraph) -> tuple[list[_Target], dict[str, str]]:
        """The weights to prune, each once even when several layers share it; and why others are not."""
        config = self.config
        names = [layer.name for layer in graph.weighted_layers(PRUNED_OPS)]
        check_patterns("prune", "layers", config.layers, names, PRUNED_OPS)
        selection = LayerSelection(config.layers, config.exclude, config.min_params)
        layers, skipped = select_weights(graph, PRUNED_OPS, selection, done="pruned")
        return [_Target(layer.name, layer.weight, graph.weight(layer.weight)) for layer in layers], skipped


def _smallest_mask(values: np.ndarray, sparsity: float) -> np.ndarray:
    """True for exactly round(sparsity * size) weights of smallest |w|; ties broken by position."""
    count = round(sparsity * values.size)
    order = np.argsort(np.abs(values).ravel(), kind="stable")
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(values.shape)


def _global_masks(arrays: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """One ranking of |w| over all arrays: the same threshold for every layer."""
    if not arrays:
        return []
    flat = np.concatenate([np.abs(a).ravel().astype(np.float64) for a in arrays])
    mask = _smallest_mask(flat, sparsity)
    bounds = np.cumsum([a.size for a in arrays])[:-1]
    return [part.reshape(a.shape) for part, a in zip(np.split(mask, bounds), arrays, strict=True)]
