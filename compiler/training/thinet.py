"""ThiNet channel selection (Luo et al., "ThiNet: A Filter Level Pruning Method", 2017) as a
torch-pruning importance: a layer's channels are ranked by what the NEXT layer loses without them.

For each layer that consumes the channels (a conv's input channels, a linear layer's input
features), the contribution of every channel to that layer's output is computed on sampled output
entries from real inputs. Channels are then removed greedily: each time the one whose removal, added
to those already removed, changes the consumers' outputs least (ThiNet's greedy subset selection).
The removal order is the importance: the first removed is the least important.

Imported only where a pass trains (torch and torch-pruning are the train extra's).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.pruner import function

_SAMPLES = 4096  # sampled output entries per consuming layer (ThiNet uses a few thousand)


class ThiNetImportance(tp.importance.Importance):
    def __init__(self, seed: int = 0) -> None:
        self.inputs: dict[torch.nn.Module, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def capture(self, net: torch.nn.Module, inputs: torch.Tensor) -> None:
        """Record the input of every Conv2d/Linear on `inputs` (call before each pruning step)."""
        self.inputs = {}
        hooks = [
            module.register_forward_pre_hook(self._keep)
            for module in net.modules()
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
        ]
        try:
            with torch.no_grad():
                net.eval()(inputs)
        finally:
            for hook in hooks:
                hook.remove()

    def _keep(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.inputs[module] = args[0].detach()

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        channels = len(group[0].idxs)
        parts = []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if layer not in self.inputs:
                continue
            if fn == function.prune_conv_in_channels and getattr(layer, "groups", 1) == 1:
                contribution = self._conv(layer, idxs)
            elif fn == function.prune_linear_in_channels:  # == : bound methods, new objects each time
                contribution = self._linear(layer, idxs)
            else:
                continue
            # Several input features can come from one channel (a flatten): their contributions add.
            root = torch.tensor(group[i].root_idxs)
            total = torch.zeros(channels, contribution.shape[1])
            parts.append(total.index_add_(0, root, contribution))
        if not parts:
            return None  # nothing consumes these channels through a weight: the pruner skips them
        return _greedy_order(torch.cat(parts, dim=1))

    def _conv(self, layer: torch.nn.Conv2d, idxs: list[int]) -> torch.Tensor:
        x = self.inputs[layer][:, idxs]
        k, out = len(idxs), layer.out_channels
        weight = layer.weight[:, idxs].transpose(0, 1).reshape(k * out, 1, *layer.kernel_size)
        y = F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, groups=k)
        return self._sample(y.reshape(y.shape[0], k, -1).transpose(0, 1).reshape(k, -1))

    def _linear(self, layer: torch.nn.Linear, idxs: list[int]) -> torch.Tensor:
        x = self.inputs[layer].flatten(1)[:, idxs]  # [N, k]
        y = x.T[:, :, None] * layer.weight[:, idxs].T[:, None, :]  # [k, N, out]
        return self._sample(y.reshape(len(idxs), -1))

    def _sample(self, contribution: torch.Tensor) -> torch.Tensor:
        if contribution.shape[1] <= _SAMPLES:
            return contribution
        columns = torch.randperm(contribution.shape[1], generator=self.generator)[:_SAMPLES]
        return contribution[:, columns]


def _greedy_order(contribution: torch.Tensor) -> torch.Tensor:
    """Importance = the step at which greedy removal takes each channel (0: removed first)."""
    channels = contribution.shape[0]
    removed_sum = torch.zeros(contribution.shape[1], dtype=torch.float64)
    data = contribution.double()
    remaining = list(range(channels))
    importance = torch.empty(channels)
    for step in range(channels):
        errors = (removed_sum[None] + data[remaining]).pow(2).sum(1)
        pick = remaining.pop(int(errors.argmin()))
        removed_sum += data[pick]
        importance[pick] = step
    return importance
