"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
2017) for models whose BatchNorm was folded into the convolutions at export.

Slimming trains per-channel scales γ (BatchNorm's) with an L1 penalty so that unneeded channels'
scales go to zero, then removes the channels with the smallest |γ|. An exported ONNX model has no
BatchNorm left, so each pruned conv gets its scale back as a gate (output × γ, γ = 1 at the start);
after the sparsity training γ is folded into the conv's weights and bias and the gate is removed,
so the network computes the same function with no extra op.

Imported only where a pass trains (torch and torch-pruning are the train extra's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp


class SlimmingGates:
    """Gates on `convs`; `penalty` is the L1 term, `fold` bakes γ into the convs and removes the gates,
    and `importance` ranks a dependency group by its root conv's |γ|."""

    def __init__(self, convs: list[torch.nn.Conv2d]) -> None:
        self.gates: dict[torch.nn.Conv2d, torch.nn.Parameter] = {}
        self.hooks: list[Any] = []
        for conv in convs:
            gate = torch.nn.Parameter(torch.ones(conv.out_channels))
            conv.register_parameter("slimming_gate", gate)
            self.gates[conv] = gate
            self.hooks.append(conv.register_forward_hook(_scale))
        self.scales: dict[torch.nn.Module, torch.Tensor] = {}

    def penalty(self) -> torch.Tensor:
        return sum((gate.abs().sum() for gate in self.gates.values()), torch.zeros(()))

    def loss(self, base: Callable[..., torch.Tensor], weight: float) -> Callable[..., torch.Tensor]:
        """`base` plus `weight` × Σ|γ| (the sparsity training's loss)."""

        def slimming_loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
            return base(logits, labels, inputs) + weight * self.penalty()

        return slimming_loss

    @torch.no_grad()
    def fold(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for conv, gate in self.gates.items():
            self.scales[conv] = gate.detach().abs().clone()
            conv.weight.mul_(gate.view(-1, *([1] * (conv.weight.dim() - 1))))
            if conv.bias is not None:
                conv.bias.mul_(gate)
            del conv._parameters["slimming_gate"]

    def importance(self) -> tp.importance.Importance:
        scales = self.scales

        class GateImportance(tp.importance.Importance):
            def __call__(self, group: Any) -> torch.Tensor | None:
                root = group[0].dep.layer
                if root not in scales:
                    return None  # not gated (excluded, or the classifier): not pruned
                return scales[root][group[0].idxs]

        return GateImportance()


def _scale(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    gate = module.slimming_gate
    return output * gate.view(1, -1, *([1] * (output.dim() - 2)))
