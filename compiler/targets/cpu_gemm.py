"""The CPU schedule of the packed GEMMs compiler/lowering/packed_gemm.py makes of pointwise convs.

The rewrite chose the register tile and packed the weights for it: MR positions (the block's
TILE_ATTR) × NR output channels (the weights' innermost axis). Here each tile keeps its MR × NR
sums in registers over the whole reduction, every step broadcasting MR input values against
NR / lanes weight vectors read from one contiguous run. Tiles are shared out over the thread pool,
the larger operand's slice shared by a thread's consecutive tiles (it then stays in cache). The
epilogue (the reshape back to rows and columns, bias, activation, residual add) runs on each tile
while its sums are in registers, for the real positions only.

An integer GEMM (DOT_ATTR) adds its products in dot-product steps, `group` input channels per lane
(the target's, e.g. compiler/targets/x86_dots.py): those channels go innermost, under the tile, and
each vector of the tile's output channels × those channels is one tensorized step. The block names the
step's tensor intrinsic and lanes, so this schedule serves any target's steps.
"""

from __future__ import annotations

import math
from typing import Any

from edgecam.compiler.lowering.packed_gemm import COMPUTE, DOT_ATTR, DOT_LANES_ATTR, TILE_ATTR
from edgecam.compiler.targets.cpu_schedules import CpuRule, in_vectors, one_reduction, pads_input
from edgecam.compiler.targets.cpu_tiles import vector_lanes


class PackedGemm(CpuRule):
    """Kernels whose reduction is a packed_gemm block; any other kernel is left to the next rule."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.base import try_inline

        blocks = self._blocks(func, target)
        if blocks is None:
            return None
        sch, infos = blocks
        if COMPUTE not in {str(sch.get(i.block_rv).name_hint) for i in infos}:
            return None
        # A conv's padded input stays a block of its own, filled in parallel first: inlined, its
        # padding would be a bounds check on every broadcast input value.
        pads = [i for i in infos if not i.is_reduction() and pads_input(sch.get(i.block_rv))]
        found = one_reduction(try_inline(sch, [i for i in infos if i not in pads]))
        if found is None or not found[1]:
            return None
        reduction, [epilogue] = found
        block = sch.get(reduction.block_rv)
        spatial = [i for i in reduction.iters if i.kind == "S"]
        weights = _read_along(block, spatial[-1].var)
        dot = _dot(block)
        lanes = dot[1] if dot else vector_lanes(target)
        if weights is None or int(weights.shape[-2 if dot else -1]) % lanes:
            return None
        channels = int(weights.shape[-2 if dot else -1])
        for pad in pads:
            sch.parallel(sch.get_loops(pad.block_rv)[0])
        _positions_as_one_axis(sch, epilogue.block_rv)

        loops = dict(zip(reduction.iters, sch.get_loops(reduction.block_rv), strict=True))
        reduce = [loops[i] for i in reduction.iters if i.kind == "R"]
        group = reduce.pop() if dot else None
        output, output_tile = sch.split(loops[spatial[-1]], [None, channels])
        leading, inner = [output], [output_tile]
        if len(spatial) == 2:  # no row loop for a single row
            row, row_tile = sch.split(loops[spatial[0]], [None, int(block.annotations[TILE_ATTR])])
            data = next(r.source for r in block.reads if not r.source.same_as(weights))
            leading = [output, row] if _elements(weights) > _elements(data) else [row, output]
            inner = [row_tile, output_tile]
            sch.unroll(row_tile)
        sch.reorder(*leading, *reduce, *inner, *([group] if group else []))
        outer = sch.fuse(*leading) if len(leading) > 1 else leading[0]
        sch.parallel(outer)
        sch.reverse_compute_at(epilogue.block_rv, outer)
        in_vectors(sch, sch.get_loops(epilogue.block_rv)[-1], vector_lanes(target))
        if dot is None:
            in_vectors(sch, output_tile, lanes)
            sch.decompose_reduction(reduction.block_rv, reduce[0])
            return sch
        vectors, lane = sch.split(output_tile, [None, lanes])
        sch.unroll(vectors)
        init = sch.decompose_reduction(reduction.block_rv, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lane, dot[0])
        return sch


def _dot(block: Any) -> tuple[str, int] | None:
    """The tensor intrinsic and lanes of the dot-product step an integer GEMM block is annotated with
    (None for a float one)."""
    name = block.annotations.get(DOT_ATTR)
    return (str(name), int(block.annotations[DOT_LANES_ATTR])) if name else None


def _read_along(block: Any, output: Any) -> Any:
    """The buffer `block` reads along its output channels (the packed weights), or None."""
    from tvm.tirx.analysis import undefined_vars

    for read in block.reads:
        if any(v.same_as(output) for r in read.region for v in undefined_vars(r.min)):
            return read.source
    return None


def _elements(buffer: Any) -> int:
    return math.prod(int(d) for d in buffer.shape)


def _positions_as_one_axis(sch: Any, block: Any) -> None:
    """The epilogue iterates [.., row, column, channel]: its leading iterators become one position
    index, so that a tile's positions (which wrap rows) are one run of it."""
    from tvm.tirx import IndexMap

    doms = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
    if len(doms) <= 2:
        return

    def flat(*iters: Any) -> list[Any]:
        position = iters[0]
        for it, dom in zip(iters[1:-1], doms[1:-1], strict=True):
            position = position * dom + it
        return [position, iters[-1]]

    sch.transform_block_layout(block, IndexMap.from_func(flat, ndim=len(doms)))
