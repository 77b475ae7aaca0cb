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
(its index clamped), and only the real rows are stored.

A dense layer at batch 1 (a classifier) is a GEMM of one row: its weights, megabytes read once per
frame, stream from one contiguous run per tile (MobileNetV2's 1280 → 1000 classifier, one znver3
core: 0.53 → 0.35 ms; ONNX Runtime 0.44 ms).

Taken: float32 NHWC/HWIO conv2d with 1×1 constant weights, stride 1, no padding or dilation, groups
1; float32 matmul by a constant 2-D matrix; where a tile's channels divide the outputs. Others keep
TOPI's.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecam.compiler.lowering.calls import rewrite_calls
from edgecam.compiler.targets.cpu_tiles import ACCUMULATOR_BUDGET, choose_tile

log = logging.getLogger(__name__)

COMPUTE = "packed_gemm"  # the GEMM's TE compute and block name, which cpu_gemm.py schedules
TILE_ATTR = "edgecam.tile_positions"  # block annotation: positions per register tile (MR)


@dataclass(frozen=True)
class Tile:
    positions: int  # MR: broadcast input values per step, one per output position
    channels: int  # NR: output channels, whole vectors, and the weights' packed block


@dataclass(frozen=True)
class Window:
    """A conv's window over its (NHWC) input; a dense layer has none."""

    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]


def pack_gemms(mod: Any, lanes: int) -> tuple[Any, int]:
    """`mod` with its float NHWC convs (groups 1) and dense layers as packed GEMMs, tiled for
    vectors of `lanes` floats; and how many were rewritten."""
    from tvm import relax

    def packed(builder: Any, call: Any) -> Any:
        found = _conv(call) or _dense(call)
        if found is None:
            return None
        weights, window = found
        positions = math.prod(int(d) for d in list(call.ty.shape)[:-1])
        tile = choose_gemm_tile(positions, weights.shape[-1], lanes)
        if tile is None:
            return None
        compute = functools.partial(gemm, tile_positions=tile.positions, window=window)
        packed_weights = relax.const(pack(weights, tile))
        return builder.call_te(compute, call.args[0], packed_weights, primfunc_name_hint=COMPUTE)

    mod, count = rewrite_calls(mod, packed)
    if count:
        log.info("packed_gemm: %d convs and dense layers as GEMMs over packed weights", count)
    return mod, count


def choose_gemm_tile(positions: int, outputs: int, lanes: int) -> Tile | None:
    """The register tile of a GEMM of `positions` rows and `outputs` columns (cpu_tiles.choose_tile,
    positions paddable)."""
    tile = choose_tile(outputs, 1, positions, lanes, ACCUMULATOR_BUDGET[lanes], paddable=True)
    return Tile(positions=tile[1], channels=tile[0]) if tile else None


def pack(weights: np.ndarray, tile: Tile) -> np.ndarray:
    """[..., channels, outputs] (HWIO, or a dense layer's [channels, outputs]) → [outputs / NR, ...,
    channels, NR]: each tile's weights one contiguous run."""
    *window, outputs = weights.shape
    blocks = weights.reshape(*window, outputs // tile.channels, tile.channels)
    return np.ascontiguousarray(np.moveaxis(blocks, -2, 0))


def _conv(call: Any) -> tuple[np.ndarray, Window] | None:
    """The HWIO weights and the window of a float NHWC conv with constant weights, groups 1."""
    from tvm import ir
    from tvm.ir.expr import GenericConst

    if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.nn.conv2d":
        return None
    attrs = call.attrs
    layouts = tuple(map(str, (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)))
    data, weight = call.args
    if layouts != ("NHWC", "HWIO", "NHWC") or int(attrs.groups) != 1 or str(call.ty.dtype) != "float32":
        return None
    if str(data.ty.dtype) != "float32" or not isinstance(weight, GenericConst):
        return None
    values = weight.value.numpy()
    if values.dtype != np.float32:
        return None
    strides, dilation = (tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.dilation))
    padding = tuple(int(v) for v in attrs.padding)
    return values, Window(strides, padding, dilation)  # type: ignore[arg-type]


def _dense(call: Any) -> tuple[np.ndarray, None] | None:
    """The [channels, outputs] weights of a float matmul by a constant 2-D matrix."""
    from tvm import ir
    from tvm.ir.expr import GenericConst

    if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.matmul":
        return None
    data, weight = call.args
    if str(data.ty.dtype) != "float32" or str(call.ty.dtype) != "float32":
        return None
    if not isinstance(weight, GenericConst) or len(weight.value.shape) != 2:
        return None
    values = weight.value.numpy()
    return (values, None) if values.dtype == np.float32 else None


def gemm(data: Any, packed: Any, tile_positions: int, window: Window | None) -> Any:
    """The TE compute: out[p, o] = Σ_(window, c) data[p + window, c] · w[o / NR, window, c, o % NR]
    over the output positions p (a conv's [n, y, x], a dense layer's rows), as a GEMM whose rows are
    those positions rounded up to a multiple of `tile_positions`: rows past the last repeat it."""
    from tvm import te

    blocks, *kernel, channels, block = (int(d) for d in packed.shape)
    if window is None:
        leading = [int(d) for d in data.shape[:-1]]
        reduce = [te.reduce_axis((0, channels), "c")]

        def read(position: list[Any], axes: list[Any]) -> Any:
            return data[(*position, axes[0])]
    else:
        leading, data = _output_positions(data, kernel, window), _padded(data, window)
        reduce = [te.reduce_axis((0, k), name) for k, name in zip(kernel, ("ky", "kx"), strict=True)]
        reduce.append(te.reduce_axis((0, channels), "c"))

        def read(position: list[Any], axes: list[Any]) -> Any:
            n, y, x = position
            ky, kx, c = axes
            (sy, sx), (dy, dx) = window.strides, window.dilation
            return data[n, y * sy + ky * dy, x * sx + kx * dx, c]

    positions = math.prod(leading)
    rows = -(-positions // tile_positions) * tile_positions
    product = te.compute(
        (rows, blocks * block),
        lambda r, o: te.sum(
            read(_unravel(r, leading), reduce) * packed[(o // block, *reduce, o % block)], axis=reduce
        ),
        name=COMPUTE,
        attrs={TILE_ATTR: tile_positions},
    )
    return te.compute(
        (*leading, blocks * block),
        lambda *index: product[_ravel(list(index)[:-1], leading), list(index)[-1]],
        name=f"{COMPUTE}_rows",
    )


def _output_positions(data: Any, kernel: list[int], window: Window) -> list[int]:
    batch, height, width, _ = (int(d) for d in data.shape)
    top, left, bottom, right = window.padding
    (sy, sx), (dy, dx) = window.strides, window.dilation
    out_h = (height + top + bottom - dy * (kernel[0] - 1) - 1) // sy + 1
    out_w = (width + left + right - dx * (kernel[1] - 1) - 1) // sx + 1
    return [batch, out_h, out_w]


def _padded(data: Any, window: Window) -> Any:
    from tvm import topi

    top, left, bottom, right = window.padding
    if not any(window.padding):
        return data
    return topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], pad_value=0.0)


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
