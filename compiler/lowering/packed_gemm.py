"""Pointwise (1×1) convolutions and dense layers as GEMMs over packed weights, for CPUs: a Relax
rewrite.

After compiler/lowering/channels_last.py a 1×1 conv reads its input as [positions, channels] and
its weights as [channels, outputs] (HWIO). A register tile of NR output channels then reads an
NR-wide slice of each weight row, one row of `outputs` floats apart per reduction step. Most of
MobileNetV2's and EfficientNet-Lite0's multiply-adds are in such convs, and their weights come from
L3 on every frame; on a 7×7 map each weight serves only 49 positions, so the strided reads bound
them: in the model they ran at 26-30 GMAC/s on a znver3 core, against 37 for ONNX Runtime (which
packs its weights at load). Packed at compile time into [outputs/NR, channels, NR], a tile's weights
are one contiguous run: in a kernel test with the caches cleared between runs, 28 → 34 GMAC/s.

The rewrite also chooses the register tile (cpu_tiles.choose_tile), because the packing depends on
it: NR is the packed block, MR (positions per tile) is recorded on the compute as TILE_ATTR for the
CPU schedule (compiler/targets/cpu_gemm.py). Where MR divides no whole number of positions (a 7×7
map's 49 positions: only 7 does, and 7 positions × 2 vectors overflow AVX2's registers) the GEMM
runs over the positions rounded up to a multiple of MR; the extra rows repeat the last position
(its index clamped), and only the real rows are stored. Likewise a float layer whose outputs fill no
whole vector (a classifier's 1000, ShuffleNet's 58 and 116, the 24, 40 or 72 of mobile networks under
AVX-512) gets output channels rounded up to whole vectors, their packed weights zero, and only the
real outputs are stored: TOPI's conv with RegisterTiles had taken those, SqueezeNet's 512 → 1000
classifier conv alone a fifth of the network's time.

A dense layer at batch 1 (a classifier) is a GEMM of one row: its weights, megabytes read once per
frame, stream from one contiguous run per tile (MobileNetV2's 1280 → 1000 classifier, one znver3
core: 0.53 → 0.35 ms; ONNX Runtime 0.44 ms).

Integer layers (compiler/lowering/qdq_to_integer.py: uint8 activations × int8 weights into int32)
are GEMMs the same way where the target names a `Dot`, an instruction that adds `group` products of
consecutive input channels into each int32 lane (x86: compiler/targets/x86_dots.py, aarch64:
compiler/targets/arm_dots.py): the weights are packed [outputs / NR, (KH, KW,) channels / group, NR,
group], so that one step's weights for a vector of lanes are one contiguous load and its `group` input
values one broadcast; the input's channels are padded to a multiple of `group` (zero weights meet
them). A step that multiplies signed bytes only (ARM's sdot) takes uint8 inputs less an offset
(a - 128, one xor of the broadcast bytes): the GEMM then adds offset · ΣW per output channel, a
constant packed beside the weights, which gives back Σ a·W exactly (padding included: its zero inputs
lose 128·W in the sum and the constant adds it back).

Taken: NHWC/HWIO conv2d with constant weights, and matmul by a constant 2-D matrix, float32 (or
uint8 × int8 → int32 with a `Dot` whose weight bound the weights keep, groups 1); where a tile's
channels divide the outputs. A grouped conv (ResNeXt's, RegNet's) is a GEMM per group: its tiles
stay within one group's outputs (_grouped_tile), every input value a tile reads is then one
broadcast, and its weights pack as a plain conv's; TOPI's grouped conv had been a loop with the
output channels innermost, gathering a group's inputs for each, its sums in memory (ResNeXt-26
32×4d 85.8 → 74.3 ms, RegNetY-400MF 6.4 → 5.9 ms, old and new library in turns: bench/README.md).
Groups of too few outputs for a vector are merged into block-diagonal ones (merge_groups). Others
keep TOPI's.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecam.compiler.lowering.calls import rewrite_calls
from edgecam.compiler.targets.cpu_tiles import ACCUMULATOR_BUDGET, DOT_COSTS, GEMM_COSTS, choose_tile

log = logging.getLogger(__name__)

COMPUTE = "packed_gemm"  # the GEMM's TE compute and block name, which cpu_gemm.py schedules
TILE_ATTR = "edgecam.tile_positions"  # block annotation: positions per register tile (MR)
# Block annotations of an integer GEMM: its Dot's tensor intrinsic (registered with TVM by the target
# that supplied the Dot) and its lanes, all the CPU schedule needs to tensorize it.
DOT_ATTR = "edgecam.dot"
DOT_LANES_ATTR = "edgecam.dot_lanes"
# How much longer than a float layer's outputs its padded output channels may be (output_vectors):
# 58 → 64, 116 → 128, 1000 → 1008.
MAX_OUTPUT_PADDING = 1.125


@dataclass(frozen=True)
class Tile:
    positions: int  # MR: broadcast input values per step, one per output position
    channels: int  # NR: output channels, whole vectors, and the weights' packed block


@dataclass(frozen=True)
class Dot:
    """An integer dot-product step a CPU target computes in one go (TVM tensor intrinsic `intrinsic`):
    `lanes` int32 sums, each adding `group` products of `input_dtype` inputs (consecutive channels,
    the same for every lane) less `input_offset` by `weight_dtype` weights (int8 ones widened at
    compile time where that is int16), exact only while every |weight| ≤ `max_weight`; a register
    tile's sums may take `accumulators` vector registers."""

    intrinsic: str
    lanes: int
    group: int
    weight_dtype: str
    max_weight: int
    accumulators: int
    input_dtype: str = "uint8"
    input_offset: int = 0  # the GEMM adds input_offset · ΣW back (the module docstring)

    def fits(self, weights: np.ndarray) -> bool:
        return bool(np.abs(weights.astype(np.int32)).max(initial=0) <= self.max_weight)


@dataclass(frozen=True)
class Window:
    """A conv's window over its (NHWC) input; a dense layer has none."""

    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]


def pack_gemms(mod: Any, lanes: int, dots: Sequence[Dot] = ()) -> tuple[Any, int]:
    """`mod` with its float NHWC convs (groups 1) and dense layers as packed GEMMs, tiled for
    vectors of `lanes` floats, and its integer ones where one of `dots` (the first that fits their
    weights) computes them; and how many were rewritten."""
    from tvm import relax

    def packed(builder: Any, call: Any) -> Any:
        found = _conv(call) or _dense(call)
        if found is None:
            return None
        weights, window = found
        dot = None
        if weights.dtype == np.int8:
            data = str(call.args[0].ty.dtype)
            dot = next((d for d in dots if d.input_dtype == data and d.fits(weights)), None)
            if dot is None:
                return None
        positions = math.prod(int(d) for d in list(call.ty.shape)[:-1])
        grouped = _group_outputs(call, weights)
        outputs = int(weights.shape[-1])
        if grouped is not None and dot is None:
            weights, grouped = merge_groups(weights, grouped, lanes)
            tile = _grouped_tile(positions, grouped, lanes)
        elif grouped is None:
            # Float outputs rounded up to whole vectors (module docstring); integer ones as they are.
            vectors = (outputs, lanes) if dot else output_vectors(outputs, lanes)
            if vectors is None:
                return None
            padded, width = vectors
            tile = choose_gemm_tile(positions, padded, width, dot, ACCUMULATOR_BUDGET[lanes])
            weights = np.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, padded - outputs)])
        else:  # integer grouped convs keep TOPI's
            return None
        if tile is None:
            return None
        compute = functools.partial(
            gemm,
            tile_positions=tile.positions,
            window=window,
            dot=dot,
            group_outputs=grouped,
            outputs=outputs,
        )
        packed_weights = relax.const(pack(weights, tile, dot))
        operands = [call.args[0], packed_weights]
        if dot is not None and dot.input_offset:
            operands.append(relax.const(offset_sums(weights, dot)))
        return builder.call_te(compute, *operands, primfunc_name_hint=COMPUTE)

    mod, count = rewrite_calls(mod, packed)
    if count:
        log.info("packed_gemm: %d convs and dense layers as GEMMs over packed weights", count)
    return mod, count


def choose_gemm_tile(
    positions: int, outputs: int, lanes: int, dot: Dot | None = None, budget: int | None = None
) -> Tile | None:
    """The register tile of a GEMM of `positions` rows and `outputs` columns (cpu_tiles.choose_tile,
    positions paddable), in vectors of `lanes` floats or of `dot`'s lanes; at most `budget`
    accumulator registers (default: ACCUMULATOR_BUDGET for `lanes`)."""
    if dot is not None:
        tile = choose_tile(outputs, 1, positions, dot.lanes, dot.accumulators, True, DOT_COSTS)
    else:
        registers = budget or ACCUMULATOR_BUDGET[lanes]
        tile = choose_tile(outputs, 1, positions, lanes, registers, True, GEMM_COSTS)
    return Tile(positions=tile[1], channels=tile[0]) if tile else None


def output_vectors(outputs: int, lanes: int) -> tuple[int, int] | None:
    """(outputs rounded up, vector width) of a float GEMM: whole vectors of `lanes` where that adds
    at most MAX_OUTPUT_PADDING; else half-width vectors where those need no padding (24, 40 under
    AVX-512: on a Zen 4, which computes a 512-bit FMA as two 256-bit halves, padding 24 to 32 would
    only add work); else None: TOPI's, as before (the few outputs of a squeeze-excitation's 1×1 convs
    or of the bundled CNN's 10-class classifier, whose tuned schedule its database keeps)."""
    full = -(-outputs // lanes) * lanes
    if full <= outputs * MAX_OUTPUT_PADDING:
        return full, lanes
    half = lanes // 2
    return (outputs, half) if half >= 4 and outputs % half == 0 else None


def _group_outputs(call: Any, weights: np.ndarray) -> int | None:
    """A grouped (not depthwise) conv's output channels per group; None for groups 1."""
    groups = int(call.attrs.groups) if hasattr(call.attrs, "groups") else 1
    return None if groups == 1 else int(weights.shape[-1]) // groups


def merge_groups(weights: np.ndarray, group_outputs: int, lanes: int) -> tuple[np.ndarray, int]:
    """A grouped conv's HWIO weights and outputs per group, with groups whose outputs fill no vector
    of `lanes` or `lanes` / 2 (≥ 4) merged into the fewest that do: m groups become one whose
    weights are block-diagonal ([kh, kw, m · channels, m · outputs], zero across the merged groups),
    so each output adds m times the products, the zero ones included. ResNeXt's groups of 4 outputs
    under AVX-512: 2 merged, half-width vectors; unmerged they were TOPI's grouped conv, a scalar
    loop (16 ms per 56×56 layer where the packed GEMMs around it took 2-5 ms, loaded host). Depthwise
    convs (one input channel per group) are left to RegisterTiles, which wastes no products."""
    *window, channels, outputs = weights.shape
    widths = [w for w in (lanes, lanes // 2) if w >= 4]
    if channels == 1 or any(group_outputs % w == 0 for w in widths):
        return weights, group_outputs
    groups = outputs // group_outputs
    merge = next(
        (m for m in range(2, groups + 1) if groups % m == 0 and m * group_outputs % widths[-1] == 0), None
    )
    if merge is None:
        return weights, group_outputs
    merged = np.zeros((*window, merge * channels, outputs), weights.dtype)
    for group in range(groups):
        at = group % merge  # its place within the merged group: its own block of input channels
        columns = slice(group * group_outputs, (group + 1) * group_outputs)
        merged[..., at * channels : (at + 1) * channels, columns] = weights[..., columns]
    return merged, merge * group_outputs


def _grouped_tile(positions: int, group_outputs: int, lanes: int) -> Tile | None:
    """A grouped conv's tile: its output channels within one group (then every input value a tile
    reads is one broadcast, as in a plain GEMM), in whole vectors, or half-width ones where a group's
    outputs fill no whole vector (RegNet's 8 per group under AVX-512). None for groups of fewer than 4
    outputs (a depthwise conv's 1): RegisterTiles takes those."""
    for width in (lanes, lanes // 2):
        if width >= 4 and group_outputs % width == 0:
            return choose_gemm_tile(positions, group_outputs, width)
    return None


def pack(weights: np.ndarray, tile: Tile, dot: Dot | None = None) -> np.ndarray:
    """[..., channels, outputs] (HWIO, or a dense layer's [channels, outputs]) → [outputs / NR, ...,
    channels, NR]: each tile's weights one contiguous run; for a `dot`, [outputs / NR, ...,
    channels / group, NR, group] in its weight type, channels padded with zero weights."""
    *window, channels, outputs = weights.shape
    if dot is not None:
        groups = -(-channels // dot.group)
        padding = [(0, 0)] * len(window) + [(0, groups * dot.group - channels), (0, 0)]
        weights = np.pad(weights, padding).astype(dot.weight_dtype)
        weights = weights.reshape(*window, groups, dot.group, outputs)
        weights = np.moveaxis(weights, -2, -1)  # [..., groups, outputs, group]
        blocks = weights.reshape(*window, groups, outputs // tile.channels, tile.channels, dot.group)
        return np.ascontiguousarray(np.moveaxis(blocks, -3, 0))
    blocks = weights.reshape(*window, channels, outputs // tile.channels, tile.channels)
    return np.ascontiguousarray(np.moveaxis(blocks, -2, 0))


def offset_sums(weights: np.ndarray, dot: Dot) -> np.ndarray:
    """input_offset · ΣW per output channel (the last axis) in int32: what a `dot` whose inputs are
    taken less its offset leaves out of each sum."""
    sums = weights.astype(np.int64).reshape(-1, weights.shape[-1]).sum(axis=0)
    return (dot.input_offset * sums).astype(np.int32)


def _conv(call: Any) -> tuple[np.ndarray, Window] | None:
    """The HWIO weights and the window of a float (or uint8 × int8 → int32) NHWC conv with constant
    weights (grouped ones' [kh, kw, channels per group, outputs])."""
    from tvm import ir
    from tvm.ir.expr import GenericConst

    if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.nn.conv2d":
        return None
    attrs = call.attrs
    layouts = tuple(map(str, (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)))
    data, weight = call.args
    if layouts != ("NHWC", "HWIO", "NHWC"):
        return None
    if not isinstance(weight, GenericConst) or not _typed(data, call, weight.value.numpy()):
        return None
    values = weight.value.numpy()
    strides, dilation = (tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation))
    padding = tuple(int(v) for v in attrs.padding)
    return values, Window(strides, padding, dilation)  # type: ignore[arg-type]


def _dense(call: Any) -> tuple[np.ndarray, None] | None:
    """The [channels, outputs] weights of a float (or uint8 × int8 → int32) matmul by a constant 2-D
    matrix."""
    from tvm import ir
    from tvm.ir.expr import GenericConst

    if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.matmul":
        return None
    data, weight = call.args
    if not isinstance(weight, GenericConst) or len(weight.value.shape) != 2:
        return None
    values = weight.value.numpy()
    return (values, None) if _typed(data, call, values) else None


def _typed(data: Any, call: Any, weights: np.ndarray) -> bool:
    """Whether the layer is float32 throughout, or uint8 inputs × int8 weights into int32."""
    types = (str(data.ty.dtype), weights.dtype, str(call.ty.dtype))
    return types in (
        ("float32", np.float32, "float32"),
        ("uint8", np.int8, "int32"),
        ("int8", np.int8, "int32"),
    )


def gemm(
    data: Any,
    packed: Any,
    offsets: Any = None,
    *,
    tile_positions: int,
    window: Window | None,
    dot: Dot | None = None,
    group_outputs: int | None = None,
    outputs: int | None = None,
) -> Any:
    """The TE compute: out[p, o] = Σ_(window, c) data[p + window, c] · w[o / NR, window, c, o % NR]
    over the output positions p (a conv's [n, y, x], a dense layer's rows), as a GEMM whose rows are
    those positions rounded up to a multiple of `tile_positions`: rows past the last repeat it. The
    first `outputs` of its columns are stored (all where None): the packed weights' others are zero.
    With a `dot`, c runs as (c / group, c % group), the latter innermost in the weights, in int32;
    a dot with an input offset multiplies data - offset, and `offsets` (offset_sums) is added back.
    A grouped conv (`group_outputs` outputs per group, a multiple of NR) reads its group's channels:
    data[..., o / group_outputs · channels + c], the same for a tile's NR outputs."""
    from tvm import te

    blocks, *kernel, channels, block = (int(d) for d in packed.shape[: -1 if dot else None])
    groups = [te.reduce_axis((0, dot.group), "g")] if dot else []
    padded_channels = channels * dot.group if dot else None
    if window is None:
        leading = [int(d) for d in data.shape[:-1]]
        data = _padded(data, Window((1, 1), (0, 0, 0, 0), (1, 1)), padded_channels)
        reduce = [te.reduce_axis((0, channels), "c"), *groups]

        def read(position: list[Any], axes: list[Any], o: Any) -> Any:
            return data[(*position, _channel(axes[0], axes[1:], dot))]
    else:
        leading = _output_positions(data, kernel, window)
        data = _padded(data, window, padded_channels)
        reduce = [te.reduce_axis((0, k), name) for k, name in zip(kernel, ("ky", "kx"), strict=True)]
        reduce += [te.reduce_axis((0, channels), "c"), *groups]

        def read(position: list[Any], axes: list[Any], o: Any) -> Any:
            n, y, x = position
            ky, kx, c, *group = axes
            (sy, sx), (dy, dx) = window.strides, window.dilation
            # A tile's outputs are one block of NR within a group: its first channel tells the group.
            first = o // block * block
            channel = _channel(c, group, dot) + (first // group_outputs * channels if group_outputs else 0)
            return data[n, y * sy + ky * dy, x * sx + kx * dx, channel]

    def weight(o: Any) -> Any:
        at = reduce[:-1] if dot else reduce
        index = (o // block, *at, o % block, *(reduce[-1:] if dot else []))
        return packed[index]

    def product(position: list[Any], o: Any) -> Any:
        if dot is None:
            return read(position, reduce, o) * weight(o)
        value = read(position, reduce, o).astype("int32")
        if dot.input_offset:  # the form the step's description (arm_dots) has
            value = value - dot.input_offset
        return value * weight(o).astype("int32")

    positions = math.prod(leading)
    rows = -(-positions // tile_positions) * tile_positions
    attrs: dict[str, Any] = {TILE_ATTR: tile_positions}
    if dot is not None:
        attrs[DOT_ATTR] = dot.intrinsic
        attrs[DOT_LANES_ATTR] = dot.lanes
    sums = te.compute(
        (rows, blocks * block),
        lambda r, o: te.sum(product(_unravel(r, leading), o), axis=reduce),
        name=COMPUTE,
        attrs=attrs,
    )

    def row(*index: Any) -> Any:
        value = sums[_ravel(list(index)[:-1], leading), index[-1]]
        return value + offsets[index[-1]] if offsets is not None else value

    return te.compute((*leading, outputs or blocks * block), row, name=f"{COMPUTE}_rows")


def _channel(c: Any, group: list[Any], dot: Dot | None) -> Any:
    return c * dot.group + group[0] if dot else c


def _output_positions(data: Any, kernel: list[int], window: Window) -> list[int]:
    batch, height, width, _ = (int(d) for d in data.shape)
    top, left, bottom, right = window.padding
    (sy, sx), (dy, dx) = window.strides, window.dilation
    out_h = (height + top + bottom - dy * (kernel[0] - 1) - 1) // sy + 1
    out_w = (width + left + right - dx * (kernel[1] - 1) - 1) // sx + 1
    return [batch, out_h, out_w]


def _padded(data: Any, window: Window, channels: int | None = None) -> Any:
    """`data` padded by the window's padding (zeros) and, to `channels`, along its last axis."""
    from tvm import topi

    extra = channels - int(data.shape[-1]) if channels else 0
    if not any(window.padding) and not extra:
        return data
    top, left, bottom, right = window.padding
    if len(data.shape) == 4:
        before, after = [0, top, left, 0], [0, bottom, right, extra]
    else:
        before, after = [0] * len(data.shape), [0] * (len(data.shape) - 1) + [extra]
    return topi.nn.pad(data, before, after, pad_value=0)


def _unravel(row: Any, leading: list[int]) -> list[Any]:
    """`row`'s index into the `leading` axes (the last position's for rows past it)."""
    from tvm import tirx

    rest, index = tirx.min(row, math.prod(leading) - 1), list[Any]()
    for extent in reversed(leading):
        index.insert(0, rest % extent)
        rest = rest // extent
    return index


def _ravel(index: list[Any], leading: list[int]) -> Any:
    flat = index[0]
    for i, extent in zip(index[1:], leading[1:], strict=True):
        flat = flat * extent + i
    return flat
