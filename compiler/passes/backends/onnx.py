"""The small ONNX interface passes build on: weights as numpy, producers/consumers, weighted layers.

Passes copy the model (`OnnxGraph.copy_of`) and edit the copy; nothing here mutates a caller's proto.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Operators whose second input is a trainable weight tensor, and which input that is.
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class WeightedLayer:
    node: Any  # onnx.NodeProto
    weight: str  # initializer name
    bias: str | None

    @property
    def name(self) -> str:
        return str(self.node.name or self.node.output[0])


class OnnxGraph:
    """A model plus indexes over its graph. Rebuild (`OnnxGraph(model)`) after structural edits."""

    def __init__(self, model: Any) -> None:
        self.model = model
        graph = model.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    @classmethod
    def copy_of(cls, model: Any) -> OnnxGraph:
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return cls(copy)

    def weight(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return np.asarray(numpy_helper.to_array(self.initializers[name]))

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Replace an initializer's data (shape may change); keeps its name and position."""
        from onnx import numpy_helper

        self.initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def add_weight(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name in self.initializers:
            raise ValueError(f"initializer {name!r} already exists")
        init = self.model.graph.initializer.add()
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.initializers[name] = init
        return name

    def weighted_layers(self, op_types: tuple[str, ...] = tuple(WEIGHTED_OPS)) -> Iterator[WeightedLayer]:
        """Layers with a constant weight (an initializer, not an activation), in graph order."""
        for node in self.model.graph.node:
            index = WEIGHTED_OPS.get(node.op_type)
            if node.op_type not in op_types or index is None or len(node.input) <= index:
                continue
            if node.input[index] not in self.initializers:
                continue
            bias_index = 2 if node.op_type != "MatMul" else None
            bias = node.input[bias_index] if bias_index is not None and len(node.input) > bias_index else None
            yield WeightedLayer(node, node.input[index], bias or None)

    @staticmethod
    def attribute(node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for attr in node.attribute:
            if attr.name == name:
                return helper.get_attribute_value(attr)
        return default

    def remove_unused_initializers(self) -> None:
        used = {name for node in self.model.graph.node for name in node.input}
        used |= {out.name for out in self.model.graph.output}
        keep = [init for init in self.model.graph.initializer if init.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)
        self.initializers = {init.name: init for init in keep}


def parameter_count(model: Any) -> int:
    """Elements in all floating-point and integer initializers (what a model "has" as parameters)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(init).size for init in model.graph.initializer))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether a layer name matches one of the fnmatch patterns a pass config's `layers`/`exclude` hold."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def tensor_shapes(model: Any) -> dict[str, list[int | None]]:
    """Static shape of every tensor (inputs, initializers, intermediates, outputs) by ONNX shape
    inference on a copy; an unknown dimension is None. Stale value_info is ignored (re-inferred)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=True)
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {init.name: list(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def check_patterns(
    kind: str, field: str, patterns: Iterable[str], names: list[str], ops: Iterable[str]
) -> None:
    """Refuse a layer pattern that matches none of `names`: a typo would otherwise select nothing."""
    from edgecam.compiler.errors import PassError

    for pattern in patterns:
        if not any(matches_any(name, [pattern]) for name in names):
            raise PassError(
                f"{kind}: `{field}` pattern {pattern!r} matches no {'/'.join(ops)} layer; "
                f"layers: {', '.join(names) or '(none)'}"
            )


def select_weights(
    graph: OnnxGraph, ops: tuple[str, ...], selection: LayerSelection, done: str
) -> tuple[list[WeightedLayer], dict[str, str]]:
    """The layers a per-weight pass rewrites, each weight once even when several layers share it,
    and why the others are left alone (`done` names what the pass did to a shared weight's first user)."""
    targets: list[WeightedLayer] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    for layer in graph.weighted_layers(ops):
        reason = _skip_reason(graph, layer, selection, seen, done)
        if reason is None:
            seen.add(layer.weight)
            targets.append(layer)
        elif reason:  # an empty reason: not selected by `layers`, nothing to report
            skipped[layer.name] = reason
    return targets, skipped


@dataclass(frozen=True)
class LayerSelection:
    layers: tuple[str, ...]
    exclude: tuple[str, ...]
    min_params: int


def _skip_reason(
    graph: OnnxGraph, layer: WeightedLayer, selection: LayerSelection, seen: set[str], done: str
) -> str | None:
    if not matches_any(layer.name, selection.layers):
        return ""
    if matches_any(layer.name, selection.exclude):
        return "excluded"
    if layer.weight in seen:
        return f"shares weight {layer.weight!r} with a layer {done} before it"
    values = graph.weight(layer.weight)
    if not np.issubdtype(values.dtype, np.floating):
        return f"weight {layer.weight!r} is {values.dtype}, not floating point (already quantized)"
    if values.size < selection.min_params:
        return f"{values.size} weights < min_params {selection.min_params}"
    return None
