"""`kind: low_rank` — low-rank factorization of weight layers (Denton et al., "Exploiting Linear
Structure Within Convolutional Networks", 2014; Kim et al., "Compression of Deep Convolutional Neural
Networks for Fast and Low Power Mobile Applications", 2016).

Dense layers (Gemm, MatMul) and 1×1 convs: truncated SVD, W [out, in] ≈ U·V with rank r, so one layer
becomes two (in → r → out). k×k convs: Tucker-2 on the output and input channel modes (tensorly's
`partial_tucker`), so one conv becomes three: 1×1 to r_in channels, the k×k core r_in → r_out with the
original strides/pads/dilations, and 1×1 to the out channels. The bias always sits on the last layer.
A channel mode kept at full rank gets no projection layer (it would only rotate the channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes.backends.onnx import OnnxGraph, WeightedLayer, matches_any, parameter_count
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass

FACTORED_OPS = ("Conv", "Gemm", "MatMul")
_CONV_SPATIAL = ("strides", "pads", "dilations", "auto_pad")
Ranks = tuple[int | None, ...]  # SVD: (r,); Tucker: (r_out, r_in), None = that mode not factored


def _check_one_target(energy: float | None, ratio: float | None, where: str) -> None:
    if (energy is None) == (ratio is None):
        raise ValueError(
            f"{where}: set exactly one of `energy` (fraction of squared singular values kept, e.g. 0.9) "
            f"or `ratio` (fraction of a layer's weights kept, e.g. 0.5); got energy={energy}, ratio={ratio}"
        )


class RankTarget(BaseModel):
    """How a layer's rank is chosen: by retained energy or by a target fraction of its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    energy: float | None = Field(default=None, gt=0.0, le=1.0)
    ratio: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> RankTarget:
        _check_one_target(self.energy, self.ratio, "low_rank override")
        return self

    def rule(self) -> tuple[Literal["energy", "ratio"], float]:
        if self.energy is not None:
            return "energy", self.energy
        if self.ratio is not None:
            return "ratio", self.ratio
        raise PassError("low_rank: a rank target needs `energy` or `ratio`")  # the validator refuses it


class LowRankConfig(PassConfig):
    kind: Literal["low_rank"] = "low_rank"
    # Smallest rank keeping this fraction of the weight's squared singular values (Tucker: of each
    # channel mode's); 1.0 keeps the numerical rank (values below float rounding are noise).
    energy: float | None = Field(default=None, gt=0.0, le=1.0)
    # Or: the rank whose factored layer has ≈ this fraction of the original layer's weights.
    ratio: float | None = Field(default=None, gt=0.0, lt=1.0)
    # fnmatch pattern → its own energy/ratio; the first matching pattern wins.
    overrides: dict[str, RankTarget] = Field(default_factory=dict)
    # fnmatch patterns on layer names; a pattern matching no Conv/Gemm/MatMul layer is refused (typos).
    layers: tuple[str, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[str, ...] = ()
    # Layers whose weight has fewer elements than this are left alone (factoring tiny layers saves
    # little and adds a layer's latency).
    min_params: int = Field(default=0, ge=0)
    # A layer is factored only when it sheds more than this fraction of its weights: every factored layer
    # adds one or two layers' latency, and a barely smaller one can still lose accuracy (measured: the
    # fashion CNN's first conv at energy 0.9 goes 288 → 287 weights and top-1 93.7% → 41.5%).
    min_saving: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> LowRankConfig:
        _check_one_target(self.energy, self.ratio, "low_rank")
        return self


@dataclass(frozen=True)
class _Plan:
    layer: WeightedLayer
    ranks: Ranks
    target: RankTarget


@register_pass
class LowRankPass(CompressionPass[LowRankConfig]):
    config_type = LowRankConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        layers: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        plans: list[_Plan] = []
        for layer, target in self._select(graph, skipped):
            plan = _plan(graph, layer, target, self.config.min_saving)
            if isinstance(plan, str):
                skipped[layer.name] = plan
            else:
                plans.append(plan)
        entries = factor_layers(graph, [(plan.layer, plan.ranks) for plan in plans], context.seed)
        for plan in plans:
            asked = plan.target.model_dump(exclude_none=True)
            layers[plan.layer.name] = {**entries[plan.layer.name], "target": asked}
        changes = {
            "layers": layers,
            "skipped": skipped,
            "params_before": parameter_count(model),
            "params_after": parameter_count(graph.model),
        }
        return PassResult(model=graph.model, changes=changes)

    def _select(self, graph: OnnxGraph, skipped: dict[str, str]) -> list[tuple[WeightedLayer, RankTarget]]:
        """The layers to factor with their rank target; why others are not (into `skipped`)."""
        config = self.config
        candidates = list(graph.weighted_layers(FACTORED_OPS))
        names = [layer.name for layer in candidates]
        _check_patterns("layers", config.layers, names)
        _check_patterns("overrides", tuple(config.overrides), names)
        explicit = {p for p in (*config.layers, *config.overrides) if p in names}
        chosen = []
        for layer in candidates:
            if not matches_any(layer.name, config.layers):
                continue
            if matches_any(layer.name, config.exclude):
                skipped[layer.name] = "excluded"
                continue
            reason = _unsupported(graph, layer)
            if reason and layer.name in explicit:
                raise PassError(f"low_rank: layer {layer.name!r} is listed explicitly but {reason}")
            size = int(np.prod(graph.initializers[layer.weight].dims))
            if not reason and size < config.min_params:
                reason = f"{size} weights < min_params {config.min_params}"
            if reason:
                skipped[layer.name] = reason
                continue
            chosen.append((layer, self._target(layer.name)))
        return chosen

    def _target(self, name: str) -> RankTarget:
        for pattern, target in self.config.overrides.items():
            if matches_any(name, [pattern]):
                return target
        return RankTarget(energy=self.config.energy, ratio=self.config.ratio)


def _check_patterns(field: str, patterns: tuple[str, ...], names: list[str]) -> None:
    for pattern in patterns:
        if not any(matches_any(name, [pattern]) for name in names):
            raise PassError(
                f"low_rank: `{field}` pattern {pattern!r} matches no {'/'.join(FACTORED_OPS)} layer with a "
                f"constant weight; layers: {', '.join(names) or '(none)'}"
            )


def _unsupported(graph: OnnxGraph, layer: WeightedLayer) -> str:
    """Why this layer's structure cannot be factored here ('' when it can)."""
    init = graph.initializers[layer.weight]
    dims = list(init.dims)
    if not np.issubdtype(graph.weight(layer.weight).dtype, np.floating):
        return f"its weight {layer.weight!r} is not floating point (already quantized)"
    users = [n.name or n.output[0] for n in graph.consumers.get(layer.weight, []) if n is not layer.node]
    if users:
        return f"its weight {layer.weight!r} is shared with {', '.join(users)}"
    if layer.node.op_type == "Conv" and graph.attribute(layer.node, "group", 1) != 1:
        group = graph.attribute(layer.node, "group", 1)
        return f"it is a grouped conv (group={group}); only group=1 convs are factored"
    if layer.node.op_type == "MatMul" and len(dims) != 2:
        return f"its MatMul weight has shape {dims}; only 2-D weights are factored"
    return ""


# --- ranks ----------------------------------------------------------------------------------


def spectrum(matrix: np.ndarray, eps: float) -> np.ndarray:
    """Singular values, those below the numerical-rank tolerance (numpy's matrix_rank rule with the
    weight's dtype `eps`) set to 0: they are the stored weight's rounding noise, not signal."""
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    return np.where(s > s[0] * max(matrix.shape) * eps, s, 0.0)


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose leading singular values keep `energy` of the squared sum (1.0: the rank)."""
    cumulative = np.cumsum(singular_values**2)
    return min(int(np.searchsorted(cumulative, energy * cumulative[-1])) + 1, len(singular_values))


def tucker_params(shape: tuple[int, ...], ranks: Ranks) -> int:
    """Weights of the factored conv: [1×1 in→r_in] + core [r_out, r_in, k…] + [1×1 r_out→out]."""
    out, cin, kernel = shape[0], shape[1], int(np.prod(shape[2:]))
    r_out, r_in = ranks
    core = (r_out or out) * (r_in or cin) * kernel
    return core + (cin * r_in if r_in else 0) + (out * r_out if r_out else 0)


def _plan(graph: OnnxGraph, layer: WeightedLayer, target: RankTarget, min_saving: float) -> _Plan | str:
    """The ranks for one layer, or why it is left alone."""
    weight = graph.weight(layer.weight)
    eps = float(np.finfo(weight.dtype).eps)
    if not np.any(weight):
        return "its weight is all zeros"
    if layer.node.op_type == "Conv" and any(d != 1 for d in weight.shape[2:]):
        ranks = _tucker_ranks(weight, target, eps)
        after = tucker_params(weight.shape, ranks)
    else:
        matrix = _as_matrix(layer, graph, weight)
        out, cin = matrix.shape
        rule, value = target.rule()
        if rule == "energy":
            rank = energy_rank(spectrum(matrix, eps), value)
        else:
            rank = int(np.clip(np.floor(value * out * cin / (out + cin)), 1, min(out, cin)))
        ranks, after = (rank,), rank * (out + cin)
    kept = ", ".join(f"{mode} {rank}" for mode, rank in rank_report(ranks, weight.shape).items())
    if after >= weight.size:
        return f"factoring would not reduce parameters: {kept} needs {after} weights, it has {weight.size}"
    if weight.size - after <= min_saving * weight.size:
        saved = weight.size - after
        return f"{kept} saves {saved} of {weight.size} weights, not more than min_saving {min_saving}"
    return _Plan(layer, ranks, target)


def _tucker_ranks(weight: np.ndarray, target: RankTarget, eps: float) -> Ranks:
    out, cin = weight.shape[:2]
    rule, value = target.rule()
    if rule == "energy":
        return _drop_full(_tucker_energy_ranks(weight, value, eps), weight.shape)
    # Keep both channel modes at the same fraction; the largest pair within the parameter budget.
    budget = value * weight.size
    r_out, r_in = 1, 1
    for candidate in range(1, out + 1):
        pair = candidate, int(np.clip(round(candidate * cin / out), 1, cin))
        if tucker_params(weight.shape, _drop_full(pair, weight.shape)) <= budget:
            r_out, r_in = pair
    return _drop_full((r_out, r_in), weight.shape)


def _tucker_energy_ranks(weight: np.ndarray, energy: float, eps: float) -> tuple[int, int]:
    """Per-mode ranks from the smallest per-mode energy (≥ `energy`) at which the truncated HOSVD keeps
    `energy` of the whole weight's squared norm. HOOI only improves on HOSVD, so the factored layer
    keeps at least `energy`, as an SVD layer does (per-mode truncation alone would keep less)."""
    w = weight.astype(np.float64)
    unfoldings = [w.reshape(w.shape[0], -1), np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)]
    bases = [np.linalg.svd(m, full_matrices=False)[0] for m in unfoldings]
    spectra = [spectrum(m, eps) for m in unfoldings]
    total = float(np.sum(w**2))

    def ranks_at(mode_energy: float) -> tuple[int, int]:
        return energy_rank(spectra[0], mode_energy), energy_rank(spectra[1], mode_energy)

    def kept(ranks: tuple[int, int]) -> float:
        core = np.einsum(
            "oi...,oa,ib->ab...", w, bases[0][:, : ranks[0]], bases[1][:, : ranks[1]], optimize=True
        )
        return float(np.sum(core**2)) / total

    low, high = energy, 1.0
    if kept(ranks_at(low)) >= energy:
        return ranks_at(low)
    for _ in range(30):  # HOSVD subspaces are nested: kept() grows with the per-mode energy
        middle = (low + high) / 2
        low, high = (low, middle) if kept(ranks_at(middle)) >= energy else (middle, high)
    return ranks_at(high)


def _drop_full(ranks: tuple[int, int], shape: tuple[int, ...]) -> Ranks:
    return tuple(None if r >= full else r for r, full in zip(ranks, shape[:2], strict=True))


def _as_matrix(layer: WeightedLayer, graph: OnnxGraph, weight: np.ndarray) -> np.ndarray:
    """The weight as [out, in], whatever the layer's own layout."""
    op = layer.node.op_type
    if op == "Conv":
        return weight.reshape(weight.shape[0], weight.shape[1])
    if op == "Gemm" and graph.attribute(layer.node, "transB", 0):
        return weight
    return weight.T  # MatMul and Gemm without transB hold [in, out]


def rank_report(ranks: Ranks, shape: tuple[int, ...]) -> dict[str, int]:
    """SVD: {"rank": r}; Tucker: {"out": r_out, "in": r_in}, a mode kept whole reported at full size."""
    if len(ranks) == 1:
        return {"rank": int(ranks[0] or 0)}
    return {"out": ranks[0] or shape[0], "in": ranks[1] or shape[1]}


# --- factorization and graph rewrite ---------------------------------------------------------


def factor_layers(
    graph: OnnxGraph, layers: list[tuple[WeightedLayer, Ranks]], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Replace each layer of `graph` (edited in place) by its factors at the given ranks, whether or not
    that saves parameters; returns each layer's report entry. The pass chooses ranks that save."""
    rewrite = _Rewrite(graph)
    entries = {layer.name: rewrite.factor(layer, ranks, seed) for layer, ranks in layers}
    rewrite.finish()
    return entries


def svd_factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] ≈ second @ first with first [rank, in], second [out, rank]; √S split between them."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]


def tucker_factors(weight: np.ndarray, ranks: Ranks, seed: int) -> tuple[Any, np.ndarray, Any]:
    """Tucker-2 (HOOI from an SVD start): weight ≈ core ×₀ u_out ×₁ u_in; a None rank → factor None."""
    from tensorly.decomposition import partial_tucker  # type: ignore[import-untyped]

    modes = [mode for mode, r in enumerate(ranks) if r is not None]
    (core, factors), _ = partial_tucker(
        weight.astype(np.float64),
        rank=[ranks[m] for m in modes],
        modes=modes,
        init="svd",
        random_state=seed,
    )
    by_mode = dict(zip(modes, factors, strict=True))
    return by_mode.get(0), np.asarray(core), by_mode.get(1)


class _Rewrite:
    """Replaces layers by their factored nodes; node and tensor names stay unique and readable."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        model_graph = graph.model.graph
        self.taken = {n.name for n in model_graph.node} | set(graph.initializers)
        self.taken |= {name for n in model_graph.node for name in (*n.input, *n.output)}
        self.taken |= {v.name for v in (*model_graph.input, *model_graph.output)}
        self.replacements: dict[str, list[Any]] = {}
        self.replaced_weights: set[str] = set()
        self._last_output = ""

    def fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name

    def factor(self, layer: WeightedLayer, ranks: Ranks, seed: int = 0) -> dict[str, Any]:
        """Factor one layer at `ranks`; returns its report entry (the new nodes go in at `finish`)."""
        weight = self.graph.weight(layer.weight)
        if len(ranks) != (2 if weight.ndim > 2 and max(weight.shape[2:]) > 1 else 1) or ranks == (None, None):
            raise ValueError(f"layer {layer.name!r} {list(weight.shape)}: ranks {ranks} do not fit it")
        if len(ranks) == 2:
            u_out, core, u_in = tucker_factors(weight, ranks, seed)
            approx = np.einsum("ab...,oa->ob...", core, u_out, optimize=True) if u_out is not None else core
            approx = np.einsum("ob...,ib->oi...", approx, u_in, optimize=True) if u_in is not None else approx
            nodes = self._tucker_nodes(layer, weight.dtype, u_in, core, u_out)
            method = "tucker2" if u_in is not None and u_out is not None else "tucker1"
        else:
            first, second = svd_factors(_as_matrix(layer, self.graph, weight), int(ranks[0] or 0))
            approx = _from_matrix(layer, self.graph, second @ first, weight.shape)
            nodes = self._svd_nodes(layer, weight.dtype, first, second)
            method = "svd"
        self.replacements[layer.node.output[0]] = nodes
        self.replaced_weights.add(layer.weight)
        new_weights = [init for node in nodes for init in node.input if init in self.graph.initializers]
        norm = float(np.linalg.norm(weight.astype(np.float64)))
        return {
            "op": layer.node.op_type,
            "method": method,
            "shape": list(weight.shape),
            "ranks": rank_report(ranks, weight.shape),
            "params_before": int(weight.size),
            "params_after": int(sum(self.graph.weight(w).size for w in new_weights if w != layer.bias)),
            "energy": round(float(np.linalg.norm(approx) / norm) ** 2, 6),
            "relative_error": round(float(np.linalg.norm(weight - approx) / norm), 6),
            "nodes": [node.name for node in nodes],
        }

    def _svd_nodes(
        self, layer: WeightedLayer, dtype: Any, first: np.ndarray, second: np.ndarray
    ) -> list[Any]:
        node, graph = layer.node, self.graph
        first_attrs: dict[str, Any] = {}
        second_attrs: dict[str, Any] = {}
        if node.op_type == "Conv":  # strides/pads on the first 1×1 conv: the second sees its grid
            ones = [1] * (len(graph.initializers[layer.weight].dims) - 2)
            first, second = first.reshape(*first.shape, *ones), second.reshape(*second.shape, *ones)
            first_attrs = {**_spatial(graph, node), "kernel_shape": ones}
            second_attrs = {"kernel_shape": ones}
        elif node.op_type == "Gemm":  # the layer's own weight layout (transB) and its alpha/beta stay
            trans_b = int(graph.attribute(node, "transB", 0))
            first, second = (first, second) if trans_b else (first.T, second.T)
            first_attrs = {"transA": int(graph.attribute(node, "transA", 0)), "transB": trans_b}
            second_attrs = {
                "alpha": graph.attribute(node, "alpha", 1.0),
                "beta": graph.attribute(node, "beta", 1.0),
                "transB": trans_b,
            }
        else:  # MatMul: x [.., in] @ [in, r] @ [r, out]
            first, second = first.T, second.T
        return [
            self._node(layer, "lr_v", first.astype(dtype), first_attrs, first_in=True),
            self._node(layer, "lr_u", second.astype(dtype), second_attrs, last=True),
        ]

    def _tucker_nodes(
        self, layer: WeightedLayer, dtype: Any, u_in: Any, core: np.ndarray, u_out: Any
    ) -> list[Any]:
        node, graph = layer.node, self.graph
        ones = [1] * (core.ndim - 2)
        core_attrs = {**_spatial(graph, node), "kernel_shape": list(core.shape[2:])}
        steps: list[tuple[str, np.ndarray, dict[str, Any]]] = []
        if u_in is not None:
            steps.append(("lr_in", u_in.T.reshape(*u_in.T.shape, *ones), {"kernel_shape": ones}))
        steps.append(("lr_core", core, core_attrs))
        if u_out is not None:
            steps.append(("lr_out", u_out.reshape(*u_out.shape, *ones), {"kernel_shape": ones}))
        return [
            self._node(layer, suffix, w.astype(dtype), attrs, first_in=i == 0, last=i == len(steps) - 1)
            for i, (suffix, w, attrs) in enumerate(steps)
        ]

    def _node(
        self, layer: WeightedLayer, suffix: str, weight: np.ndarray, attrs: dict[str, Any], **where: bool
    ) -> Any:
        """One factored node: `<layer>.<suffix>` with weight `<layer>.<suffix>.weight`; the first reads
        the layer's input, the last writes its output and carries the bias (Gemm's C)."""
        from onnx import helper

        node = layer.node
        name = self.fresh(f"{layer.name}.{suffix}")
        source = node.input[0] if where.get("first_in") else self._last_output
        inputs = [source, self.graph.add_weight(self.fresh(f"{name}.weight"), weight)]
        if where.get("last") and layer.bias:
            inputs.append(layer.bias)
        output = node.output[0] if where.get("last") else self.fresh(f"{name}.out")
        self._last_output = output
        return helper.make_node(node.op_type, inputs, [output], name=name, **attrs)

    def finish(self) -> None:
        """Put the factored nodes where their layers were (graph order stays topological)."""
        import onnx

        graph = self.graph.model.graph
        rebuilt = []
        for node in graph.node:
            for new in self.replacements.get(node.output[0], [node]):
                copy = onnx.NodeProto()
                copy.CopyFrom(new)
                rebuilt.append(copy)
        del graph.node[:]
        graph.node.extend(rebuilt)
        used = {name for node in graph.node for name in node.input}
        keep = [i for i in graph.initializer if i.name in used or i.name not in self.replaced_weights]
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _spatial(graph: OnnxGraph, node: Any) -> dict[str, Any]:
    """The conv's strides/pads/dilations/auto_pad, as set on the node."""
    values = {name: graph.attribute(node, name) for name in _CONV_SPATIAL}
    return {name: value for name, value in values.items() if value is not None}


def _from_matrix(
    layer: WeightedLayer, graph: OnnxGraph, matrix: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Inverse of `_as_matrix`: an [out, in] matrix back in the layer's own layout."""
    if layer.node.op_type == "Conv" or (
        layer.node.op_type == "Gemm" and graph.attribute(layer.node, "transB", 0)
    ):
        return matrix.reshape(shape)
    return matrix.T.reshape(shape)
