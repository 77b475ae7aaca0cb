"""How RegisterTiles (compiler/targets/cpu_schedules.py) reads a reduction kernel as a GEMM, and the
register tile it gives it: a few output channels or positions × a few whole vectors, sized to the
target's vector registers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_ROW = 4  # an innermost row shorter than this gains nothing from vectorizing


# Registers a tile's accumulators may take: AVX-512 has 32 vector registers, AVX2 and NEON 16 (32 on
# aarch64, but its vectors are narrower); the rest hold the loaded inputs and broadcast weights.
ACCUMULATOR_BUDGET = {16: 16, 8: 12, 4: 16}
# A depthwise conv's tile also keeps a weight vector per vector of channels in registers.
WINDOW_BUDGET = {16: 16, 8: 10, 4: 16}
MAX_TILE_ROWS = 8  # output channels per tile: beyond this the weight broadcasts dominate
# A padded channel axis may be this much longer than the real one, and a padded tile must score
# PAD_GAIN times the best tile without padding (choose_tile).
MAX_PADDING = 1.15
PAD_GAIN = 1.1


def vector_lanes(target: Any) -> int:
    """32-bit lanes in one of `target`'s vector registers: 16 with AVX-512, 8 with AVX/AVX2, 4 else
    (SSE, NEON)."""
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(target))
    if "avx512f" in features:
        return 16
    return 8 if "avx" in features else 4


@dataclass
class GemmShape:
    """A reduction kernel read as C[channel, position] += A[channel, r] · B[r, position]: `positions`
    is the vectorized output axis (or an output row and column to fuse), `channel` the output axis
    the data B does not depend on (a depthwise conv's last other axis; None for a dense layer at
    batch 1), and the tile sizes: `rows` fused output rows, `columns` positions and `channels`
    channels per tile."""

    spatial: list[Any]
    reduce: list[Any]
    channel: Any
    positions: list[Any]
    rows: int
    columns: int
    channels: int
    lanes: int  # of the vectors the positions are computed in
    vectors_larger: bool  # whether the operand read as vectors (B) has more elements than A

    @staticmethod
    def of(block: Any, iters: list[Any], lanes: int) -> GemmShape | None:
        """The GEMM reading of a reduction block, or None."""
        from tvm.tirx.analysis import undefined_vars

        spatial = [i for i in iters if i.kind == "S"]
        reduce = [i for i in iters if i.kind == "R"]
        if not spatial or not reduce:
            return None
        regions = [(r, [set(undefined_vars(x.min)) for x in r.region]) for r in block.reads]

        def uses(region: list[set[Any]], its: list[Any]) -> bool:
            return any(i.var in axis for i in its for axis in region)

        last = spatial[-1]
        data = [(r, region) for r, region in regions if uses(region, [last])]
        if not data or last.dom < MIN_ROW or not all(_unit_stride(r, last) for r, _ in data):
            return None
        fused = len(spatial) >= 2 and all(_whole_rows(r, spatial[-2:]) for r, _ in data)
        positions = spatial[-2:] if fused else [last]
        others = [i for i in spatial if i not in positions]
        # The channel axis: one the data does not depend on (its rows reuse each loaded vector);
        # a depthwise conv's data depends on every axis, and its tile rows are output columns.
        free = [i for i in others if not any(uses(region, [i]) for _, region in data)]
        channel = free[-1] if free else (others[-1] if others else None)
        # Fused, a tile is whole output rows (`rows` of them); else a run along the one axis.
        height, width = (positions[0].dom, positions[1].dom) if fused else (last.dom, 1)
        channels = channel.dom if channel else 1
        for vector in (lanes, lanes // 2):  # half-width vectors where no tile fills whole ones
            broadcast = bool(free)
            budget = (ACCUMULATOR_BUDGET if broadcast else WINDOW_BUDGET)[lanes]
            costs = GEMM_COSTS if broadcast else WINDOW_COSTS
            tile = choose_tile(height, width, channels, vector, budget, costs=costs)
            if tile is not None:
                rows, tile_channels = tile
                larger = _elements(r for r, _ in data) > _elements(
                    r for r, region in regions if not uses(region, positions)
                )
                return GemmShape(
                    spatial, reduce, channel, positions, rows, rows * width, tile_channels, vector, larger
                )
        return None


def choose_tile(
    height: int,
    width: int,
    channels: int,
    lanes: int,
    budget: int,
    paddable: bool = False,
    costs: tuple[int, int] = (3, 1),
) -> tuple[int, int] | None:
    """(rows of `width` positions, channels) per tile: the tile whose accumulators (channels × whole
    vectors of `lanes`) fit `budget` registers and that does the most multiply-adds per load
    (`_tile_score`, each loaded vector and broadcast value weighted by `costs`); rows divide
    `height`, channels divide `channels` unless `paddable` and padding pays. None when no row count
    makes whole vectors: LLVM spills odd-length vectors such as <49 x float> on every use.

    Padding (the positions of a packed GEMM, compiler/lowering/packed_gemm.py) is for axes no tile
    wider than one vector divides (a 7×7 map's 49 positions: 1 or 7) or where the best unpadded tile
    has a single channel (a 13×13 map's 169 positions: 1 or 13; 9 vectors × 1 position loads a weight
    vector per multiply-add), and only when its best tile scores PAD_GAIN more, its padding rows
    counted as lost work, squared for the idle rows. On a znver3, a 1×1 conv on a 7×7 map: 2 vectors
    × 5 positions padded to 50 ran at 41-42 GMAC/s, 2 × 6 padded to 54 at 34-39, 1 × 7 unpadded at
    26-33; on a 112×112 map (where 2 × 4 divides), 2 × 6 padded ran at half the speed of 2 × 4."""
    best: dict[bool, tuple[float, int, int, tuple[int, int]]] = {}
    for rows in (k for k in range(1, height + 1) if height % k == 0 and (k * width) % lanes == 0):
        vectors = rows * width // lanes
        for count in range(1, MAX_TILE_ROWS + 1):
            padded = -(-channels // count) * count
            if vectors * count > budget or padded > (channels * MAX_PADDING if paddable else channels):
                continue
            score = _tile_score(vectors, count, costs) * (channels / padded) ** 2
            entry = (score, vectors * count, vectors, (rows, count))
            if entry[:2] > best.get(padded > channels, (0.0, 0))[:2]:
                best[padded > channels] = entry
    plain, padding = best.get(False), best.get(True)
    thin = plain is not None and 1 in (plain[2], plain[3][1])
    if padding and (plain is None or (thin and padding[0] > PAD_GAIN * plain[0])):
        return padding[3]
    return plain[3] if plain else None


def _tile_score(vectors: int, count: int, costs: tuple[int, int]) -> float:
    """Multiply-adds per load of a tile of `count` channels × `vectors` vectors, a loaded vector
    and a broadcast value weighted by `costs`: GEMM_COSTS, WINDOW_COSTS or DOT_COSTS."""
    load, broadcast = costs
    return vectors * count / (load * vectors + broadcast * count)


# A float GEMM (a value per channel is broadcast against each loaded vector): a loaded vector counts
# three times: it comes from the larger operand (a conv's weights), from further away than the
# broadcast values, and a 3-vector row of 96 bytes spans two cache lines half the time. Measured on
# a znver3 (AVX2, one thread), 1×1 convs: on 14×14 maps 3 vectors × 4 positions ran 5-15% faster
# than 2 × 6; counted once, 1 × 10 won over 7 × 1 on a 7×7 map, which then ran 1.8× slower.
GEMM_COSTS = (3, 1)
# A depthwise conv, whose channels are output columns that each load their own input vectors: the
# score that served it before fused positions.
WINDOW_COSTS = (1, 1)
# An integer dot-product step (compiler/targets/x86_dots.py): its weights are a quarter or half a
# float's bytes, while each broadcast input is a load, a move to a vector register and a shuffle
# (vpmovzxbw too for vpmaddwd). Measured on a znver3 core, 1×1 convs on a 14×14 map: 2 vectors of
# 32 channels × 2 positions ran 1.6× (vpmaddubsw) and 1.5× (vpmaddwd) the speed of 2 × 16 × 4
# positions on 96 → 576 channels, and as fast on 576 → 96.
DOT_COSTS = (1, 3)


def _unit_stride(read: Any, position: Any) -> bool:
    """Whether `read` walks its innermost dimension with the vectorized position, one element per
    step (so a vector of positions is one contiguous load, not a gather)."""
    from tvm.sym.analyzer import Analyzer

    index = read.region[-1].min
    rest = Analyzer().simplify(index - position.var)
    return bool(any(v.same_as(position.var) for v in _vars(index))) and not any(
        v.same_as(position.var) for v in _vars(rest)
    )


def _vars(expr: Any) -> list[Any]:
    from tvm.tirx.analysis import undefined_vars

    return list(undefined_vars(expr))


def _elements(reads: Any) -> int:
    """Elements of the buffers `reads` come from."""
    return sum(math.prod(int(d) for d in r.source.shape) for r in reads)


def _whole_rows(read: Any, rows: list[Any]) -> bool:
    """Whether `read` indexes its last two dimensions exactly by the output row and column and spans
    them whole (a pointwise, stride-1 conv): fused rows are then consecutive in memory."""
    region = read.region
    if len(region) < 2:
        return False
    shape = read.source.shape
    return all(
        axis.min.same_as(r.var) and int(extent) == r.dom
        for r, axis, extent in zip(rows, region[-2:], shape[-2:], strict=True)
    )
