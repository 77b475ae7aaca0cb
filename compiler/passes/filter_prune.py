"""`kind: filter_prune` — structured filter pruning by L1 norm (Li et al., "Pruning Filters for
Efficient ConvNets", 2017): whole output channels of Conv layers go, and so do the matching inputs of
every layer that reads them, so the graph really gets smaller (fewer parameters and MACs).

How channels are followed: every output channel of a pruned Conv is a *slot*. Slots flow forward
through ops that keep channels apart (BatchNormalization, activations, pools, per-channel constants,
depthwise Conv, Concat, Flatten) to the layers that consume them (Conv, Gemm, MatMul), whose weights are
sliced to match. Where two tensors are added (a residual), their slots are merged (union-find), so
their producers lose the same channels: that group is ranked by the summed L1 norm. An op the pass
does not know stops it with a PassError naming the layer and the op; it never guesses.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes._channels import ChannelTracer, Producer
from edgecam.compiler.passes.backends.onnx import OnnxGraph, matches_any, parameter_count, tensor_shapes
from edgecam.compiler.passes.base import CompressionPass, PassContext, PassResult, register_pass
from edgecam.compiler.passes.bias_correction import CorrectsBias, input_means, output_shift

Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]


class FilterPruneConfig(CorrectsBias):
    kind: Literal["filter_prune"] = "filter_prune"
    # Fraction of each selected Conv's output channels removed (the lowest-L1 filters).
    ratio: Ratio = 0.25
    # Per-layer overrides: fnmatch pattern → ratio; the first matching pattern wins.
    ratios: dict[str, Ratio] = Field(default_factory=dict)
    # Which Conv layers lose filters (fnmatch on node names); the others keep all their channels.
    layers: tuple[str, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[str, ...] = ()
    # Kept channel counts are rounded up to a multiple of this (vector width of the camera's CPU/NPU).
    round_to: int = Field(default=1, ge=1, le=1024)


@register_pass
class FilterPrunePass(CompressionPass[FilterPruneConfig]):
    config_type = FilterPruneConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        convs = [layer.name for layer in graph.weighted_layers(("Conv",))]
        for pattern in (*self.config.layers, *self.config.ratios):
            if not any(matches_any(name, [pattern]) for name in convs):
                raise PassError(
                    f"filter_prune: pattern {pattern!r} matches no Conv layer; Conv layers: "
                    f"{', '.join(convs) or '(none)'}"
                )
        tracer = ChannelTracer(graph, tensor_shapes(graph.model), self._selected)
        tracer.walk()
        for name in convs:
            if matches_any(name, self.config.layers) and matches_any(name, self.config.exclude):
                tracer.skipped[name] = "excluded"
        removed, layers = self._choose(tracer)
        compensated = None
        if self.config.bias_correction:
            feeds = context.require_calibration("filter_prune (bias_correction)")
            compensated = _compensate(graph, tracer, removed, input_means(model, _consumed(tracer), feeds))
        tracer.rewrite(removed)
        _finish(graph)
        changes = {
            "layers": layers,
            "skipped": tracer.skipped,
            "params_before": parameter_count(model),
            "params_after": parameter_count(graph.model),
        }
        if compensated is not None:
            changes["bias_correction"] = compensated
        return PassResult(model=graph.model, changes=changes)

    def _selected(self, name: str) -> bool:
        return matches_any(name, self.config.layers) and not matches_any(name, self.config.exclude)

    def _ratio(self, name: str) -> float:
        for pattern, ratio in self.config.ratios.items():
            if matches_any(name, [pattern]):
                return ratio
        return self.config.ratio

    def _choose(self, tracer: ChannelTracer) -> tuple[set[int], dict[str, Any]]:
        """Per group of tied producers: the lowest summed-L1 channel slots to remove, and the report."""
        removed: set[int] = set()
        layers: dict[str, Any] = {}
        for group, components in tracer.groups():
            ratio = min(self._ratio(p.name) for p in group)
            drop = self._drop_count(len(components), sum(map(tracer.is_pinned, components)), ratio)
            scores = {root: _score(tracer, members) for root, members in components.items()}
            free = sorted((r for r in components if not tracer.is_pinned(r)), key=lambda r: (scores[r], r))
            chosen = set(free[:drop])
            _keep_one_per_producer(tracer, group, components, chosen, scores)
            removed |= chosen
            for producer in group:
                layers[producer.name] = _layer_report(tracer, producer, chosen, group, components)
        return removed, layers

    def _drop_count(self, total: int, pinned: int, ratio: float) -> int:
        """Channels to remove from a group of `total`; kept count ≥ 1, ≥ pinned, a multiple of round_to."""
        step = self.config.round_to
        keep = max(1, pinned, total - math.floor(total * ratio + 1e-9))
        keep = min(total, math.ceil(keep / step) * step)
        return total - keep


def _consumed(tracer: ChannelTracer) -> list[str]:
    return [edit.node.input[0] for edit in tracer.input_slices()]


def _compensate(
    graph: OnnxGraph, tracer: ChannelTracer, removed: set[int], means: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Before slicing: add what the removed input channels contributed on average to each consuming
    layer's bias (Nagel et al.'s bias correction with ΔW = the weights that go), so the layer's mean
    output stays where it was. E[x] comes from the original model on the calibration frames."""
    shifts, skipped = {}, {}
    for edit in tracer.input_slices():
        node, name = edit.node, str(edit.node.name or edit.node.output[0])
        positions = tracer.kept(edit.like, removed)
        weight = graph.weight(node.input[1]).astype(np.float64)
        if len(positions) == weight.shape[edit.axis]:
            continue
        if len(node.input) < 3 or node.input[2] not in graph.initializers:
            skipped[name] = "no constant bias to compensate into"
            continue
        gone = weight.copy()
        np.put_along_axis(gone, _index(positions, edit.axis, gone.ndim), 0.0, axis=edit.axis)
        shift = output_shift(node, gone, means[node.input[0]])
        graph.set_weight(node.input[2], (graph.weight(node.input[2]) + shift).astype(np.float32))
        shifts[name] = round(float(np.abs(shift).max()), 6)
    return {"max_abs_shift": shifts, "skipped": skipped}


def _index(positions: list[int], axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = len(positions)
    return np.asarray(positions).reshape(shape)


def _score(tracer: ChannelTracer, members: list[int]) -> float:
    return float(sum(tracer.slot_l1(slot) for slot in members))


def _keep_one_per_producer(
    tracer: ChannelTracer,
    group: list[Producer],
    components: dict[int, list[int]],
    chosen: set[int],
    scores: dict[int, float],
) -> None:
    """A Concat group may rank all of one layer's channels lowest: give that layer back its best one."""
    for producer in group:
        own = [root for root, members in components.items() if tracer.owns(producer, members)]
        if own and all(root in chosen for root in own):
            chosen.discard(max(own, key=lambda r: scores[r]))


def _layer_report(
    tracer: ChannelTracer,
    producer: Producer,
    chosen: set[int],
    group: list[Producer],
    components: dict[int, list[int]],
) -> dict[str, Any]:
    gone = [i for i, slot in enumerate(producer.slots) if tracer.find(slot) in chosen]
    report: dict[str, Any] = {
        "channels_before": len(producer.slots),
        "channels_after": len(producer.slots) - len(gone),
        "removed": gone,
    }
    if len(group) > 1:
        report["tied_with"] = [p.name for p in group if p is not producer]
    pinned = sum(map(tracer.is_pinned, components))
    if pinned:
        report["pinned"] = {"channels": pinned, "why": tracer.pin_reason(components)}
    return report


def _finish(graph: OnnxGraph) -> None:
    """Drop stale shapes, re-infer them and check the whole model: a wrong graph never leaves the pass."""
    import onnx

    graph.remove_unused_initializers()
    del graph.model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(graph.model, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except Exception as exc:  # onnx raises several types; any of them means the edit is wrong
        raise PassError(f"filter_prune produced an invalid model (a bug in the pass): {exc}") from exc
    graph.model.CopyFrom(inferred)
