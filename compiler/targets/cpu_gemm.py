"""The CPU schedule of the packed GEMMs compiler/lowering/packed_gemm.py makes of pointwise convs.

The rewrite chose the register tile and packed the weights for it: MR positions (the block's
TILE_ATTR) × NR output channels (the weights' innermost axis). Here each tile keeps its MR × NR
sums in registers over the whole reduction, every step broadcasting MR input values against
NR / lanes weight vectors read from one contiguous run. Tiles are shared out over the thread pool,
the larger operand's slice shared by a thread's consecutive tiles (it then stays in cache). The
epilogue (the reshape back to rows and columns, bias, activation, residual add) runs on each tile
while its sums are in registers, for the real positions only.
"""

from __future__ import annotations

import math
from typing import Any

from edgecam.compiler.lowering.packed_gemm import COMPUTE, TILE_ATTR
from edgecam.compiler.targets.cpu_schedules import CpuRule, in_vectors, one_reduction
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
        found = one_reduction(try_inline(sch, infos))
        if found is None or not found[1]:
            return None
        reduction, [epilogue] = found
        block = sch.get(reduction.block_rv)
        positions = int(block.annotations[TILE_ATTR])
        weights = next(r.source for r in block.reads if len(r.source.shape) == 3)
        channels, lanes = int(weights.shape[-1]), vector_lanes(target)
        if channels % lanes:
            return None
        _positions_as_one_axis(sch, epilogue.block_rv)

        *rows, output, reduce = sch.get_loops(reduction.block_rv)  # no row loop for a single row
        output, output_tile = sch.split(output, [None, channels])
        data = next(r.source for r in block.reads if r.source is not weights)
        weights_larger = _elements(weights) > _elements(data)
        leading, inner = [output], [output_tile]
        if rows:
            row, row_tile = sch.split(rows[0], [None, positions])
            leading = [output, row] if weights_larger else [row, output]
            inner = [row_tile, output_tile]
            sch.unroll(row_tile)
        sch.reorder(*leading, reduce, *inner)
        outer = sch.fuse(*leading) if len(leading) > 1 else leading[0]
        sch.parallel(outer)
        sch.reverse_compute_at(epilogue.block_rv, outer)
        in_vectors(sch, sch.get_loops(epilogue.block_rv)[-1], lanes)
        in_vectors(sch, output_tile, lanes)
        sch.decompose_reduction(reduction.block_rv, reduce)
        return sch


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
