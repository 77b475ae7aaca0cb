"""`kind: weight_sharing` — k-means weight sharing with Huffman-coded indices (Deep Compression, Han et al.
2016): each Conv/Gemm/MatMul weight becomes a codebook of at most 2**bits centroids plus one index per
weight, and the indices are stored canonical-Huffman-coded (edgecam/weight_codec.py).

The returned model holds the centroid values themselves, so evaluating it measures exactly what the
camera runs; the returned WeightCoding holds the bytes the artifact stores instead of the raw tensors.
A pruned layer (one with exact zeros) keeps 0.0 as an exact centroid and every zero stays zero: its
non-zero weights share the other 2**bits - 1 centroids, and the frequent zero index codes in ~1 bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from edgecam import weight_codec
from edgecam.compiler.passes.backends.onnx import (
    WEIGHTED_OPS,
    LayerSelection,
    OnnxGraph,
    WeightedLayer,
    check_patterns,
    matches_any,
    select_weights,
)
from edgecam.compiler.passes.base import (
    CompressionPass,
    PassContext,
    PassResult,
    WeightCoding,
    register_pass,
)
from edgecam.compiler.passes.bias_correction import CorrectsBias

SHARED_OPS = ("Conv", "Gemm", "MatMul")
Bits = Annotated[int, Field(ge=1, le=8)]


class WeightSharingConfig(CorrectsBias):
    kind: Literal["weight_sharing"] = "weight_sharing"
    # Codebook size per layer: 2**bits centroids (indices are at most one byte).
    bits: Bits = 4
    # Per-layer override, {fnmatch pattern: bits}; the first matching pattern wins (Han et al. gave
    # convolutions 8 bits and fully connected layers 5).
    layer_bits: dict[str, Bits] = Field(default_factory=dict)
    # fnmatch patterns on layer names (node name, else its first output); a pattern matching no layer is
    # refused so a typo does not silently share nothing.
    layers: tuple[str, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[str, ...] = ()
    # Layers whose weight has fewer elements than this keep their raw fp32 weights.
    min_params: int = Field(default=0, ge=0)
    # Lloyd iterations of the k-means (scikit-learn's max_iter).
    max_iter: int = Field(default=300, ge=1, le=10_000)


@dataclass
class _Shared:
    """One layer's result: the codebook, the index of every weight, and the coded bytes."""

    codebook: np.ndarray
    indices: np.ndarray
    blob: bytes


@register_pass
class WeightSharingPass(CompressionPass[WeightSharingConfig]):
    config_type = WeightSharingConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        targets, skipped = self._select(graph)
        layers: dict[str, Any] = {}
        encoded: dict[str, bytes] = {}
        for layer in targets:
            values = graph.weight(layer.weight)
            bits = self._bits_for(layer.name)
            shared = share(values, bits, seed=context.seed, max_iter=self.config.max_iter)
            if len(shared.blob) >= values.nbytes:
                # A small layer's codebook and header can outweigh its raw tensor (the bundled CNN's
                # first conv at 8 bits: 1,621 coded bytes for 1,152 raw): the raw one is smaller and exact.
                skipped[layer.name] = f"coded {len(shared.blob)} bytes >= raw {values.nbytes}: kept raw"
                continue
            graph.set_weight(layer.weight, shared.codebook[shared.indices])
            encoded[layer.weight] = shared.blob
            layers[layer.name] = _layer_changes(layer.weight, bits, values, shared)
        changes = coded_changes(layers, skipped)
        # Biases stay raw fp32 (not coded), so correcting them leaves the coding valid.
        if (correction := self.config.corrected(model, graph.model, context)) is not None:
            changes["bias_correction"] = correction
        return PassResult(model=graph.model, changes=changes, coding=weight_coding(encoded))

    def _bits_for(self, layer: str) -> int:
        for pattern, bits in self.config.layer_bits.items():
            if matches_any(layer, [pattern]):
                return bits
        return self.config.bits

    def _select(self, graph: OnnxGraph) -> tuple[list[WeightedLayer], dict[str, str]]:
        """The layers to share, each weight once even when several layers use it; and why others are not."""
        config = self.config
        names = [layer.name for layer in graph.weighted_layers(SHARED_OPS)]
        _refuse_quantized(graph)
        check_patterns("weight_sharing", "layers", config.layers, names, SHARED_OPS)
        check_patterns("weight_sharing", "layer_bits", tuple(config.layer_bits), names, SHARED_OPS)
        selection = LayerSelection(config.layers, config.exclude, config.min_params)
        layers, skipped = select_weights(graph, SHARED_OPS, selection, done="coded")
        targets = []
        for layer in layers:
            # k-means needs values to cluster; the shared selection does not look at the values.
            values = graph.weight(layer.weight)
            if values.size == 0:
                skipped[layer.name] = f"weight {layer.weight!r} is empty"
            elif not np.all(np.isfinite(values)):
                skipped[layer.name] = f"weight {layer.weight!r} holds NaN or infinity"
            else:
                targets.append(layer)
        return targets, skipped


def _refuse_quantized(graph: OnnxGraph) -> None:
    """Weights an `int8` pass quantized reach their layer through DequantizeLinear: k-means codes of
    int8 values are not what the artifact's codec stores (float codebooks), so say so by name rather
    than that the layer patterns match nothing."""
    from edgecam.compiler.errors import PassError

    quantized = []
    for node in graph.model.graph.node:
        index = WEIGHTED_OPS.get(node.op_type)
        if node.op_type not in SHARED_OPS or index is None or len(node.input) <= index:
            continue
        producer = graph.producer.get(node.input[index])
        if (
            producer is not None
            and producer.op_type == "DequantizeLinear"
            and producer.input[0] in graph.initializers
        ):
            quantized.append(node.name or node.output[0])
    if quantized:
        raise PassError(
            f"weight_sharing: layers {quantized} have quantized weights (DequantizeLinear of integer "
            "initializers, from an `int8` pass): int8 and weight_sharing do not combine in one recipe; "
            "keep one of them"
        )


def share(values: np.ndarray, bits: int, seed: int = 0, max_iter: int = 300) -> _Shared:
    """Cluster `values` into at most 2**bits centroids (0.0 exact when there are zeros) and code them."""
    flat = values.reshape(-1)
    zeros = flat == 0
    has_zeros = bool(zeros.any())
    clusters = (1 << bits) - (1 if has_zeros else 0)
    nonzero = flat[~zeros]
    centroids = _kmeans_1d(nonzero, clusters, seed, max_iter) if nonzero.size and clusters else np.zeros(0)
    if has_zeros:
        centroids = np.append(centroids, 0.0)
    # Rounding to the weight's dtype can merge centroids: dedupe after the cast, then sort so the
    # codebook reads in order and midpoints between neighbours give the nearest centroid.
    codebook = np.unique(centroids.astype(values.dtype))
    indices = _nearest(flat, codebook, keep_zero=has_zeros)
    blob = weight_codec.encode(indices.reshape(values.shape), codebook)
    return _Shared(codebook=codebook, indices=indices.reshape(values.shape), blob=blob)


def _kmeans_1d(values: np.ndarray, clusters: int, seed: int, max_iter: int) -> np.ndarray:
    """k-means centroids of 1-D `values`, linearly initialised over [min, max] as Han et al. found best
    (it keeps centroids for the rare large weights). Fewer distinct values than clusters: those values."""
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]

    distinct = np.unique(values)
    if len(distinct) <= clusters:
        return distinct.astype(np.float64)
    data = values.astype(np.float64).reshape(-1, 1)
    init = np.linspace(data.min(), data.max(), clusters).reshape(-1, 1)
    kmeans = KMeans(n_clusters=clusters, init=init, n_init=1, max_iter=max_iter, random_state=seed)
    kmeans.fit(data)
    return np.asarray(kmeans.cluster_centers_, dtype=np.float64).reshape(-1)


def _nearest(flat: np.ndarray, codebook: np.ndarray, keep_zero: bool) -> np.ndarray:
    """Index of the nearest codebook entry for every value; with `keep_zero`, exact zeros map to the 0.0
    entry and non-zero values to the nearest non-zero entry, so the pruned pattern is kept exactly."""
    candidates = np.flatnonzero(codebook != 0) if keep_zero else np.arange(len(codebook))
    if keep_zero and len(candidates) == 0:  # every weight is zero
        return np.zeros(flat.shape, dtype=np.uint8)
    points = codebook[candidates].astype(np.float64)
    midpoints = (points[1:] + points[:-1]) / 2
    indices = candidates[np.searchsorted(midpoints, flat.astype(np.float64))]
    if keep_zero:
        indices = np.where(flat == 0, int(np.flatnonzero(codebook == 0)[0]), indices)
    return indices.astype(np.uint8)


def coded_changes(layers: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    """The report's changes of a pass that codes weights: each coded layer, those kept raw and why,
    and the totals."""
    raw = sum(entry["raw_bytes"] for entry in layers.values())
    coded = sum(entry["coded_bytes"] for entry in layers.values())
    return {
        "codec": weight_codec.CODEC,
        "layers": layers,
        "skipped": skipped,
        "raw_bytes": raw,
        "coded_bytes": coded,
        "ratio": round(raw / coded, 3) if coded else 0.0,
    }


def weight_coding(encoded: dict[str, bytes]) -> WeightCoding | None:
    """The artifact's coding of `encoded` ({initializer: blob}); None when no layer was coded."""
    if not encoded:
        return None
    return WeightCoding(codec=weight_codec.CODEC, encoded=encoded, decode=weight_codec.decode)


def _layer_changes(weight: str, bits: int, values: np.ndarray, shared: _Shared) -> dict[str, Any]:
    raw = int(values.nbytes)
    coded = len(shared.blob)
    return {
        "weight": weight,
        "bits": bits,
        "params": int(values.size),
        "zeros": int(np.count_nonzero(values == 0)),
        "centroids": len(shared.codebook),
        "centroids_used": len(np.unique(shared.indices)),
        "raw_bytes": raw,
        "coded_bytes": coded,
        "ratio": round(raw / coded, 3),
    }
