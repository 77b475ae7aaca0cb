"""`kind: iterative_prune` — pruning with retraining (Han et al., "Learning both Weights and Connections
for Efficient Neural Networks", 2015): prune, retrain with the pruned weights held at zero, prune more.

The sparsity grows in `steps` equal increments to `sparsity`; after each increment the network is
retrained with the recipe's `training:` budget and loss. Pruned weights stay pruned: the masks are
torch.nn.utils.prune's (weight = weight_orig * mask in every forward), so neither the gradient nor the
optimizer can move them, and a weight pruned once is ranked first again at the next step.

Criteria: `magnitude` (|w|, Han et al.) or `obd` (Optimal Brain Damage, LeCun et al. 1990: saliency
h_ii·w_i²/2 with h_ii the diagonal of the loss's Hessian in their Gauss-Newton form, estimated
from per-sample gradients on training inputs: `hessian_diagonal`). The output
ONNX keeps its shape and holds exact zeros, like `kind: prune`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgecam.compiler.passes.backends.onnx import LayerSelection, OnnxGraph, check_patterns, select_weights
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass

# One ranking rule for "the smallest k of these": kind: prune's, so both passes cut the same weights
# for the same scores.
from edgecam.compiler.passes.prune import PRUNED_OPS, _global_masks, _smallest_mask
from edgecam.compiler.training.layers import TrainedLayer, torch_layers
from edgecam.compiler.training.trainer import Trainer


class IterativePruneConfig(PassConfig):
    kind: Literal["iterative_prune"] = "iterative_prune"
    trains: ClassVar[bool] = True
    # Final fraction of the selected weights that are zero.
    sparsity: float = Field(default=0.8, ge=0.0, lt=1.0)
    # Prune-retrain rounds; round k reaches sparsity * k / steps.
    steps: int = Field(default=3, ge=1, le=100)
    criterion: Literal["magnitude", "obd"] = "magnitude"
    # global: one ranking over all selected layers (Han et al. for large layers); per_layer: each
    # layer loses `sparsity` (or its `layer_sparsity` entry).
    scope: Literal["per_layer", "global"] = "global"
    layer_sparsity: dict[str, float] = Field(default_factory=dict)
    layers: tuple[str, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[str, ...] = ()
    min_params: int = Field(default=0, ge=0)
    # Retraining per round; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)
    # OBD: training inputs the Hessian diagonal is averaged over (one backward pass each).
    obd_samples: int = Field(default=256, ge=1)


@register_pass
class IterativePrunePass(CompressionPass[IterativePruneConfig]):
    config_type = IterativePruneConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        import torch
        from torch.nn.utils import prune

        config = self.config
        trainer = context.require_training(config.kind)
        graph = OnnxGraph.copy_of(model)
        names = [layer.name for layer in graph.weighted_layers(PRUNED_OPS)]
        check_patterns(config.kind, "layers", config.layers, names, PRUNED_OPS)
        check_patterns(config.kind, "layer_sparsity", tuple(config.layer_sparsity), names, PRUNED_OPS)
        selection = LayerSelection(config.layers, config.exclude, config.min_params)
        selected, skipped = select_weights(graph, PRUNED_OPS, selection, done="pruned")
        converted = trainer.to_torch(model)
        shapes = {layer.weight: graph.weight(layer.weight).shape for layer in selected}
        layers, not_trained = torch_layers(converted, selected, shapes)
        skipped |= not_trained
        for layer in layers:
            prune.identity(layer.module, "weight")  # an all-ones mask, replaced round by round
        rounds = []
        for step in range(1, config.steps + 1):
            fraction = step / config.steps
            scores = self._saliency(layers, trainer, converted.module)
            masks = self._masks(layers, scores, fraction)
            with torch.no_grad():
                for layer, pruned in zip(layers, masks, strict=True):
                    layer.module.weight_mask.copy_(torch.from_numpy(~pruned))
            stage = f"{config.kind}-{config.criterion}-step{step}of{config.steps}"
            context.progress(f"round {step}/{config.steps}: sparsity {config.sparsity * fraction:.3f}")
            fit = trainer.fit(converted.module, stage, epochs=config.epochs, lr=config.lr)
            rounds.append({"sparsity": round(config.sparsity * fraction, 6), "training": fit.summary()})
        for layer in layers:
            prune.remove(layer.module, "weight")  # weight = weight_orig * mask, a plain parameter again
        exported = trainer.to_onnx(converted)
        return PassResult(exported, self._changes(exported, layers, skipped, rounds))

    def _targets(self, layers: list[TrainedLayer], fraction: float) -> list[float]:
        config = self.config
        targets = []
        for layer in layers:
            rate = next(
                (value for pattern, value in config.layer_sparsity.items() if _match(layer.name, pattern)),
                config.sparsity,
            )
            targets.append(rate * fraction)
        return targets

    def _masks(
        self, layers: list[TrainedLayer], scores: list[np.ndarray], fraction: float
    ) -> list[np.ndarray]:
        """True where a weight is pruned in this round (the lowest scores)."""
        if self.config.scope == "global" and not self.config.layer_sparsity:
            return _global_masks(scores, self.config.sparsity * fraction)
        return [
            _smallest_mask(score, rate)
            for score, rate in zip(scores, self._targets(layers, fraction), strict=True)
        ]

    def _saliency(self, layers: list[TrainedLayer], trainer: Trainer, module: Any) -> list[np.ndarray]:
        """Per weight: |w| (magnitude) or h_ii·w²/2 (OBD). Pruned weights score 0 either way."""
        weights = [layer.module.weight.detach() for layer in layers]
        if self.config.criterion == "magnitude":
            return [w.abs().numpy().astype(np.float64) for w in weights]
        originals = [layer.module.weight_orig for layer in layers]
        hessian = hessian_diagonal(module, originals, trainer, self.config.obd_samples)
        return [
            (0.5 * h * w.pow(2)).numpy().astype(np.float64) for h, w in zip(hessian, weights, strict=True)
        ]

    def _changes(
        self, exported: Any, layers: list[TrainedLayer], skipped: dict[str, str], rounds: list[Any]
    ) -> dict[str, Any]:
        graph = OnnxGraph(exported)
        by_name = {layer.name: layer for layer in graph.weighted_layers(PRUNED_OPS)}
        entries: dict[str, Any] = {}
        for layer in layers:
            weight = by_name[layer.name].weight
            values = graph.weight(weight)
            zeros = int(np.count_nonzero(values == 0))
            entries[layer.name] = {
                "weight": weight,
                "params": int(values.size),
                "zeros": zeros,
                "sparsity": round(zeros / values.size, 6),
            }
        total = sum(entry["params"] for entry in entries.values())
        zeros = sum(entry["zeros"] for entry in entries.values())
        return {
            "criterion": self.config.criterion,
            "scope": self.config.scope,
            "layers": entries,
            "skipped": skipped,
            "params": total,
            "zeros": zeros,
            "sparsity": round(zeros / total, 6) if total else 0.0,
            "rounds": rounds,
        }


def hessian_diagonal(module: Any, parameters: list[Any], trainer: Trainer, samples: int) -> list[Any]:
    """diag(∂²L/∂p²) of the cross-entropy for each parameter, in LeCun et al.'s Gauss-Newton form:
    diag(Jᵀ S J) with S the softmax's curvature, which is the exact diagonal for a layer whose inputs
    do not depend on its own weights (ReLU networks, almost everywhere). Estimated as E[g ⊙ g] of
    per-sample gradients with labels drawn from the model's own softmax (the Fisher identity), on the
    first `samples` training inputs: positive, and far less noisy than Hutchinson's z ⊙ Hz probes."""
    import torch

    data = trainer.train_data()
    generator = torch.Generator().manual_seed(trainer.seed)
    sums = [torch.zeros_like(p) for p in parameters]
    count = min(len(data), samples)
    module.eval()  # the curvature of the network as it predicts, without dropout noise
    for index in range(count):
        logits = module(data.inputs[index : index + 1])
        drawn = torch.multinomial(torch.softmax(logits.detach(), 1), 1, generator=generator)[:, 0]
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, drawn), parameters)
        for total, grad in zip(sums, grads, strict=True):
            total += grad.pow(2)
    return [total / max(count, 1) for total in sums]


def _match(name: str, pattern: str) -> bool:
    from edgecam.compiler.passes.backends.onnx import matches_any

    return matches_any(name, [pattern])
