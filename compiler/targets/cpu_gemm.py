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
        broadcast = _broadcast_epilogue(sch, infos)
        if broadcast is None:
            found = one_reduction(try_inline(sch, [i for i in infos if i not in pads]))
        else:  # the gate's blocks inlined into the gate, the gate kept: the GEMM's epilogue
            gate, _ = broadcast
            found = one_reduction(
                [*try_inline(sch, [i for i in infos if i not in (*pads, *broadcast)]), gate]
            )
        if found is None or not found[1]:
            return None
        reduction, [epilogue] = found
        block = sch.get(reduction.block_rv)
        spatial = [i for i in reduction.iters if i.kind == "S"]
        weights = _read_along(block, spatial[-1].var)
        dot = _dot(block)
        if weights is None:
            return None
        channels = int(weights.shape[-2 if dot else -1])
        # A grouped conv's tile, or one of outputs that fill no whole vector, may be half a vector
        # register wide (packed_gemm._grouped_tile, packed_gemm.output_vectors).
        full = vector_lanes(target)
        lanes = dot[1] if dot else next((w for w in (full, full // 2) if channels % w == 0), channels)
        if channels % lanes:
            return None
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
        in_vectors(sch, sch.get_loops(epilogue.block_rv)[-1], min(full, channels) if dot else lanes)
        if broadcast is not None:
            _parallel_map(sch, broadcast[1].block_rv, vector_lanes(target))
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
    """The buffer `block` reads along its output channels (the packed weights), or None. A grouped
    conv's input depends on the output channel too (its group), but only the packed weights have it
    in their first axis (the block of NR) as well as their last."""
    from tvm.tirx.analysis import undefined_vars

    def uses(region: Any) -> bool:
        return any(v.same_as(output) for v in undefined_vars(region.min))

    along = [read for read in block.reads if any(uses(r) for r in read.region)]
    blocked = [read for read in along if uses(read.region[0]) and uses(read.region[-1])]
    chosen = blocked or along
    return chosen[0].source if chosen else None


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


def _broadcast_epilogue(sch: Any, infos: list[Any]) -> tuple[Any, Any] | None:
    """(gate, product) when the GEMM's result, after elementwise blocks (the gate), multiplies a larger
    tensor (the product): a squeeze-excitation's expand conv → sigmoid → channel multiply, fused into
    one kernel. Else None.

    Inlined into the product as any epilogue would be, the gate's sigmoid ran once per element of the
    feature map instead of once per channel, all of it on one thread (the GEMM's parallel loop has
    one tile for a 1×1 map). Kept apart, the gate is the GEMM's epilogue and the product a map of its
    own, in parallel. These kernels are small in EfficientNet-B0: it did not run measurably faster
    (bench/README.md, bench_unseen)."""
    gemm = next(i for i in infos if str(sch.get(i.block_rv).name_hint) == COMPUTE)
    size = _elements(sch.get(gemm.block_rv).writes[0].source)
    after = infos[infos.index(gemm) + 1 :]
    larger = [i for i in after if _elements(sch.get(i.block_rv).writes[0].source) > size]
    if len(larger) != 1 or larger[0] is not after[-1] or len(after) < 2 or not larger[0].is_injective():
        return None
    return after[-2], larger[0]


def _parallel_map(sch: Any, block: Any, lanes: int) -> None:
    """An elementwise block's outer loops in parallel, its innermost in vectors where it holds whole ones."""
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    extent = sch.get(loops[-1]).extent
    if int(extent) % lanes == 0:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
