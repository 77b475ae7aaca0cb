"""Channel dependency tracing for filter_prune (ONNX): which weights must be sliced when a Conv's
output channels go, and which Convs must lose the same channels.

Each output channel of a prunable Conv is a *slot* (an int). A tensor that carries such channels maps
its channel axis (axis 1: NCHW activations, or the feature axis of [N, F] after Flatten) to a list of
slots, one per position. Elementwise ops between two traced tensors merge their slots (union-find);
Concat concatenates the lists; Flatten repeats each slot H*W times. A slot that can never go (channels
of a tensor that is not traced, or tied to one) is *pinned*. Edits are recorded as `Slice`s —
"slice this node input along this axis like that tensor's channels" — and applied once the slots to
remove are chosen, so analysis and rewrite cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes.backends.onnx import OnnxGraph

# Ops applied channel by channel: output channel c depends only on input channel c.
UNARY = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Softplus", "Identity", "Dropout", "Neg", "Abs", "Sqrt", "Exp",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
}  # fmt: skip
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"}


@dataclass
class Producer:
    """A Conv whose output channels may be removed."""

    name: str
    node: Any
    slots: list[int]
    l1: np.ndarray  # L1 norm of each filter


@dataclass(frozen=True)
class Slice:
    node: Any
    index: int  # which input of `node` (an initializer) is sliced
    axis: int
    like: str  # ...keeping the positions of this tensor's channels that survive


@dataclass
class _Slots:
    parent: list[int] = field(default_factory=list)
    owner: list[Producer | None] = field(default_factory=list)
    channel: list[int] = field(default_factory=list)
    pins: dict[int, str] = field(default_factory=dict)  # root → why it cannot go

    def new(self, owner: Producer | None, channel: int, pin: str | None = None) -> int:
        slot = len(self.parent)
        self.parent.append(slot)
        self.owner.append(owner)
        self.channel.append(channel)
        if pin:
            self.pins[slot] = pin
        return slot

    def find(self, slot: int) -> int:
        while self.parent[slot] != slot:
            self.parent[slot] = self.parent[self.parent[slot]]
            slot = self.parent[slot]
        return slot

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.pins:
                self.pins.setdefault(ra, self.pins.pop(rb))

    def pin(self, slot: int, why: str) -> None:
        self.pins.setdefault(self.find(slot), why)


class ChannelTracer:
    def __init__(
        self, graph: OnnxGraph, shapes: dict[str, list[int | None]], selected: Callable[[str], bool]
    ) -> None:
        self.graph = graph
        self.shapes = shapes
        self.selected = selected
        self.slots = _Slots()
        self.traced: dict[str, list[int]] = {}  # tensor → slot per channel position
        self.producers: list[Producer] = []
        self.edits: list[Slice] = []
        self.groups_of: list[tuple[Any, str]] = []  # depthwise Conv whose `group` follows a tensor
        self.reshapes: list[Any] = []  # Reshape nodes whose target shape becomes [N, -1]
        self.skipped: dict[str, str] = {}

    # --- analysis ------------------------------------------------------------------------------

    def walk(self) -> None:
        handlers: dict[str, Callable[[Any], None]] = {
            "Conv": self._conv,
            "BatchNormalization": self._batchnorm,
            "Concat": self._concat,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
        }
        for node in self.graph.model.graph.node:
            self._refuse_implicit_use(node)
            if node.op_type in handlers:
                handlers[node.op_type](node)
            elif not any(name in self.traced for name in node.input):
                continue
            elif node.op_type in UNARY:
                self._passthrough(node, data_inputs=1)
            elif node.op_type in ELEMENTWISE:
                self._elementwise(node)
            else:
                self._block(node, next(n for n in node.input if n in self.traced), "unsupported op")
        for output in self.graph.model.graph.output:
            if output.name in self.traced:
                raise PassError(
                    f"filter_prune: the channels of layer {self._owners(output.name)} reach graph output "
                    f"{output.name!r}, whose shape must not change; exclude that layer"
                )

    def _conv(self, node: Any) -> None:
        name = str(node.name or node.output[0])
        weight = node.input[1] if len(node.input) > 1 else ""
        group = int(self.graph.attribute(node, "group", 1))
        self._data_only(node, 1)
        if weight not in self.graph.initializers:
            if node.input[0] in self.traced:
                self._block(node, node.input[0], "its weight is not a constant")
            if self.selected(name):
                self.skipped[name] = "its weight is not a constant"
            return
        out_channels = int(self.graph.initializers[weight].dims[0])
        if group != 1:
            self._grouped_conv(node, name, group, self._dim(node.input[0], 1), out_channels)
            return
        if node.input[0] in self.traced:
            self.edits.append(Slice(node, 1, 1, node.input[0]))
        if not self.selected(name):
            return
        filters = np.abs(self.graph.weight(weight)).reshape(out_channels, -1).sum(axis=1)
        producer = Producer(name, node, [], filters.astype(np.float64))
        producer.slots = [self.slots.new(producer, c) for c in range(out_channels)]
        self.producers.append(producer)
        self.traced[node.output[0]] = producer.slots
        self.edits.append(Slice(node, 1, 0, node.output[0]))
        if len(node.input) > 2 and node.input[2]:
            self.edits.append(Slice(node, 2, 0, node.output[0]))

    def _grouped_conv(self, node: Any, name: str, group: int, in_ch: int, out_ch: int) -> None:
        """Depthwise (group == input channels): channels pass through, `multiplier` outputs each."""
        traced = node.input[0] in self.traced
        if group != in_ch or out_ch % group:
            if traced:
                self._block(node, node.input[0], f"grouped convolution (group={group})")
            if self.selected(name):
                self.skipped[name] = f"grouped convolution (group={group}) is not pruned"
            return
        if self.selected(name):
            self.skipped[name] = "depthwise: its channels follow the layer that feeds it"
        if not traced:
            return
        multiplier = out_ch // group
        self.traced[node.output[0]] = [s for s in self.traced[node.input[0]] for _ in range(multiplier)]
        self.edits.append(Slice(node, 1, 0, node.output[0]))
        if len(node.input) > 2 and node.input[2]:
            self.edits.append(Slice(node, 2, 0, node.output[0]))
        self.groups_of.append((node, node.input[0]))

    def _batchnorm(self, node: Any) -> None:
        if node.input[0] not in self.traced:
            return
        self._data_only(node, 1)
        for index in range(1, 5):
            self._need_constant(node, index)
            self.edits.append(Slice(node, index, 0, node.input[0]))
        self.traced[node.output[0]] = self.traced[node.input[0]]

    def _passthrough(self, node: Any, data_inputs: int) -> None:
        self._data_only(node, data_inputs)
        self.traced[node.output[0]] = self.traced[node.input[0]]

    def _elementwise(self, node: Any) -> None:
        """Traced operands are tied channel by channel; a per-channel constant is sliced with them."""
        traced = [name for name in node.input if name in self.traced]
        slots = self.traced[traced[0]]
        rank = len(self._shape(node.output[0]))
        for name in traced:
            if len(self.traced[name]) != len(slots) or len(self._shape(name)) != rank:
                self._block(node, name, "it broadcasts channels of different tensors")
            for a, b in zip(slots, self.traced[name], strict=True):
                self.slots.union(a, b)
        for index, name in enumerate(node.input):
            if name in self.traced or not name:
                continue
            shape = self._shape(name)
            axis = 1 - (rank - len(shape))  # numpy broadcasting aligns shapes from the right
            if axis < 0 or shape[axis] == 1:
                continue  # the same value for every channel
            if shape[axis] != len(slots):
                self._block(node, traced[0], f"operand {name!r} has shape {shape}")
            if name in self.graph.initializers:
                self.edits.append(Slice(node, index, axis, traced[0]))
            else:
                for slot in slots:
                    self.slots.pin(slot, f"{node.op_type} {_name(node)!r} combines them with {name!r}")
        self.traced[node.output[0]] = slots

    def _concat(self, node: Any) -> None:
        if not any(name in self.traced for name in node.input):
            return
        rank = len(self._shape(node.output[0]))
        axis = int(self.graph.attribute(node, "axis"))
        if axis % rank != 1:
            self._block(node, next(n for n in node.input if n in self.traced), f"concat on axis {axis}")
        slots: list[int] = []
        for name in node.input:
            if name in self.traced:
                slots += self.traced[name]
            else:  # channels from elsewhere: they stay, and so does whatever they are tied to
                why = f"{name!r} joins them in Concat {_name(node)!r} and is not pruned"
                slots += [self.slots.new(None, c, why) for c in range(self._dim(name, 1))]
        self.traced[node.output[0]] = slots

    def _flatten(self, node: Any) -> None:
        if node.input[0] not in self.traced:
            return
        shape = self._shape(node.input[0])
        if int(self.graph.attribute(node, "axis", 1)) % len(shape) != 1:
            self._block(node, node.input[0], "it does not flatten from axis 1")
        self._flatten_like(node, shape)

    def _reshape(self, node: Any) -> None:
        """Only the flatten a torch `x.view(N, -1)` makes, with a constant target shape."""
        if node.input[0] not in self.traced:
            return
        self._data_only(node, 1)
        shape, target = self._shape(node.input[0]), self._shape(node.output[0])
        flat = len(target) == 2 and target[0] == shape[0] and node.input[1] in self.graph.initializers
        if not flat:
            self._block(node, node.input[0], f"reshape {shape} → {target} is not a flatten to [N, -1]")
        self.reshapes.append(node)
        self._flatten_like(node, shape)

    def _flatten_like(self, node: Any, shape: list[int]) -> None:
        spatial = int(np.prod(shape[2:], dtype=np.int64))
        self.traced[node.output[0]] = [s for s in self.traced[node.input[0]] for _ in range(spatial)]

    def _gemm(self, node: Any) -> None:
        if not any(name in self.traced for name in node.input):
            return
        self._data_only(node, 1)
        self._need_constant(node, 1)
        if int(self.graph.attribute(node, "transA", 0)):
            self._block(node, node.input[0], "transA=1")
        axis = 1 if int(self.graph.attribute(node, "transB", 0)) else 0
        self.edits.append(Slice(node, 1, axis, node.input[0]))

    def _matmul(self, node: Any) -> None:
        if not any(name in self.traced for name in node.input):
            return
        self._data_only(node, 1)
        self._need_constant(node, 1)
        if len(self._shape(node.input[0])) != 2 or len(self._shape(node.input[1])) != 2:
            self._block(node, node.input[0], "only [N, F] x [F, M] is followed")
        self.edits.append(Slice(node, 1, 0, node.input[0]))

    # --- checks ----------------------------------------------------------------------------------

    def _data_only(self, node: Any, data_inputs: int) -> None:
        """Traced channels may only enter a node as its data, never as a weight, a shape or a bound."""
        for name in node.input[data_inputs:]:
            if name in self.traced:
                self._block(node, name, "they enter as a parameter, not as data")

    def _need_constant(self, node: Any, index: int) -> None:
        if node.input[index] not in self.graph.initializers:
            self._block(node, node.input[0], f"its input {node.input[index]!r} is not a constant")

    def _refuse_implicit_use(self, node: Any) -> None:
        """If/Loop/Scan bodies may read outer tensors without listing them as inputs."""
        for name in _subgraph_names(node):
            if name in self.traced:
                self._block(node, name, "a subgraph reads them")

    def _block(self, node: Any, tensor: str, why: str) -> None:
        raise PassError(
            f"filter_prune cannot follow the channels of layer {self._owners(tensor)} into "
            f"{node.op_type} node {_name(node)!r} ({why}); exclude that layer (exclude: [...]) to keep "
            "its channels"
        )

    def _owners(self, tensor: str) -> str:
        names = {o.name for s in self.traced.get(tensor, []) if (o := self.slots.owner[s]) is not None}
        return ", ".join(repr(n) for n in sorted(names)) or "(none)"

    def _shape(self, tensor: str) -> list[int]:
        shape = self.shapes.get(tensor)
        if shape is None or any(d is None for d in shape):
            raise PassError(
                f"filter_prune needs the static shape of tensor {tensor!r}, but shape inference gave "
                f"{shape}; export the model with fixed input sizes"
            )
        return [int(d) for d in shape if d is not None]

    def _dim(self, tensor: str, axis: int) -> int:
        return self._shape(tensor)[axis]

    # --- what the pass decides on ------------------------------------------------------------------

    def find(self, slot: int) -> int:
        return self.slots.find(slot)

    def is_pinned(self, root: int) -> bool:
        return self.slots.find(root) in self.slots.pins

    def pin_reason(self, roots: Any) -> str:
        return next((self.slots.pins[self.find(r)] for r in roots if self.is_pinned(r)), "")

    def slot_l1(self, slot: int) -> float:
        owner = self.slots.owner[slot]
        return 0.0 if owner is None else float(owner.l1[self.slots.channel[slot]])

    def owns(self, producer: Producer, members: list[int]) -> bool:
        return any(self.slots.owner[s] is producer for s in members)

    def groups(self) -> Iterator[tuple[list[Producer], dict[int, list[int]]]]:
        """Producers tied through shared slots, each with its components (root → member slots)."""
        members: dict[int, list[int]] = {}
        for slot in range(len(self.slots.parent)):
            members.setdefault(self.find(slot), []).append(slot)
        done: set[int] = set()
        for first in self.producers:
            if id(first) in done:
                continue
            group, queue = [first], [first]
            components: dict[int, list[int]] = {}
            done.add(id(first))
            while queue:
                for slot in queue.pop().slots:
                    root = self.find(slot)
                    components.setdefault(root, members[root])
                    for other in (self.slots.owner[s] for s in members[root]):
                        if other is not None and id(other) not in done:
                            done.add(id(other))
                            group.append(other)
                            queue.append(other)
            yield group, components

    # --- rewrite -----------------------------------------------------------------------------------

    def kept(self, tensor: str, removed: set[int]) -> list[int]:
        """Channel positions of `tensor` that survive when the slot roots in `removed` go."""
        return [i for i, s in enumerate(self.traced[tensor]) if self.find(s) not in removed]

    def input_slices(self) -> list[Slice]:
        """The edits that cut input channels out of a Conv's or Gemm's weight (not its own outputs; a
        depthwise Conv loses outputs with its inputs, so it has none)."""
        return [
            e
            for e in self.edits
            if e.index == 1
            and e.like == e.node.input[0]
            and (e.node.op_type == "Gemm" or (e.node.op_type == "Conv" and e.axis == 1))
        ]

    def rewrite(self, removed: set[int]) -> None:
        """Slice every recorded input like its tensor's surviving channels."""

        def kept(tensor: str) -> list[int]:
            return self.kept(tensor, removed)

        for edit in self.edits:
            positions = kept(edit.like)
            if len(positions) != len(self.traced[edit.like]):
                name = _private_initializer(self.graph, edit.node, edit.index)
                self.graph.set_weight(name, np.take(self.graph.weight(name), positions, axis=edit.axis))
        for node, tensor in self.groups_of:
            _set_int_attribute(node, "group", len(kept(tensor)))
        for node in self.reshapes:
            name = _private_initializer(self.graph, node, 1)
            target = self.graph.weight(name)
            self.graph.set_weight(name, np.array([target[0], -1], dtype=target.dtype))


def _name(node: Any) -> str:
    return str(node.name or node.output[0])


def _private_initializer(graph: OnnxGraph, node: Any, index: int) -> str:
    """The initializer at node.input[index], copied first if another input also reads it."""
    name = str(node.input[index])
    uses = sum(list(n.input).count(name) for n in graph.model.graph.node)
    if uses > 1:
        copy = f"{name}/{_name(node)}/{index}"
        graph.add_weight(copy, graph.weight(name))
        node.input[index] = copy
        name = copy
    return name


def _set_int_attribute(node: Any, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value


def _subgraph_names(node: Any) -> set[str]:
    """Every tensor name read inside the node's subgraphs (If/Loop/Scan bodies), recursively."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names.update(inner.input)
                names |= _subgraph_names(inner)
    return names
