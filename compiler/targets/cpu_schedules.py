"""The schedules edgecam adds to TVM's untuned pipeline for CPU targets (x86_64, aarch64).

Untuned, TVM 0.27 lowers every fused kernel on a CPU as its naive loop nest: one thread, and for a
convolution the kernel-window reduction innermost (3 iterations), which LLVM cannot vectorize. Three
dlight rules take the reduction kernels, the first that applies wins (`schedule_rules`):

- `PackedGemm` (compiler/targets/cpu_gemm.py): the float convs and dense layers that
  compiler/lowering/packed_gemm.py made GEMMs over packed weights, with the register tile it chose.
- `PackedGemm` also takes the int8 convs and dense layers packed for the target's integer dot-product
  step (compiler/targets/x86_dots.py: vpdpbusd, vpmaddubsw, vpmaddwd).
- `RegisterTiles`: other GEMM-shaped kernels (depthwise convs, integer convs no dot step takes,
  anything not prepared) keep a tile of output channels × whole vectors of outputs in registers for
  the whole reduction.
- `ParallelRows`: what RegisterTiles declines (rows that fill no whole vector, integer layers LLVM
  vectorizes better itself on ARM): outer output loops in parallel on TVM's thread pool, the
  reduction inside them and a row of the output innermost, where LLVM vectorizes it.

Measured untuned (bench/README.md has the recorded runs; TVM ran on one thread in all but the last,
edgecam/tvm_threads.py): at x86-64-v3 on a busy znver3, ParallelRows alone took the bundled CNN
22.4 → 4.5 ms, MobileNetV2 209 → 68 ms; on a znver4 (AVX-512), channels-last RegisterTiles took
MobileNetV2 from ParallelRows' 35 ms to 9-12 ms; on a znver3 with both cores, packed GEMMs took it to
0.92-0.96× ONNX Runtime's time.
"""

from __future__ import annotations

import math
from typing import Any

from edgecam.compiler.targets.cpu_positions import fuse_output_positions
from edgecam.compiler.targets.cpu_tiles import MIN_ROW, GemmShape, vector_lanes

MAX_UNROLLED_TAPS = 49  # a 7×7 window; a dense layer's long reduction stays a loop
MIN_PARALLEL_ELEMENTS = 1 << 14  # ParallelInjective: smaller kernels take microseconds on one thread
PARALLEL_CHUNK = 1024  # ParallelInjective: elements per parallel iteration of a one-axis kernel


def default_pipeline(target: Any) -> Any:
    """TVM's CPU pipeline (relax/backend/cpu_generic/pipeline.py) with ParallelRows scheduling what it
    takes before the build."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _context: Any) -> Any:
        with target:
            passes = pipeline.library_dispatch_passes(target) + pipeline.legalize_passes(target)
            passes += schedule_passes()
            passes += pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def schedule_passes() -> list[Any]:
    """The pass that schedules every kernel nothing scheduled before it: GEMM-shaped ones with
    RegisterTiles, other reductions (depthwise convs) with ParallelRows."""
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(*schedule_rules())]


def schedule_rules() -> list[Any]:
    """edgecam's CPU schedule rules, the first that takes a kernel wins (also what `edgecam tune`
    measures first for each task, compiler/tuning_defaults.py)."""
    from edgecam.compiler.targets.cpu_gemm import PackedGemm

    return [PackedGemm(), RegisterTiles(), ParallelRows(), ParallelInjective()]


def _rule_base() -> type:
    from tvm.s_tir.dlight.base import ScheduleRule

    return ScheduleRule


class CpuRule(_rule_base()):  # type: ignore[misc]
    """What both rules share: LLVM targets only, and the kernel read as blocks (dlight's analysis)."""

    def is_target_available(self, target: Any) -> bool:
        return bool(target.kind.name == "llvm")

    def _blocks(self, func: Any, target: Any) -> tuple[Any, list[Any]] | None:
        """(schedule, the kernel's normalized blocks), or None for a function this rule cannot take:
        also one with a buffer of symbolic shape (a size known only at run time, e.g. ONNX Expand to
        a shape input), which the rules' tiling arithmetic needs as numbers; TVM's default takes it."""
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        blocks = [sch.get(info.block_rv) for info in infos]
        shapes = [
            dim for block in blocks for region in (*block.reads, *block.writes) for dim in region.source.shape
        ]
        return (sch, infos) if all(isinstance(dim, tirx.IntImm) for dim in shapes) else None


def one_reduction(infos: list[Any]) -> tuple[Any, list[Any]] | None:
    """(reduction, epilogue) when the blocks left after inlining are one reduction with static
    spatial and reduction iterators followed by at most one elementwise block; else None."""
    if not infos or not infos[0].is_reduction() or any(i.is_reduction() for i in infos[1:]):
        return None
    reduction, epilogue = infos[0], infos[1:]
    if len(epilogue) > 1 or (epilogue and not epilogue[0].is_injective()):
        return None
    iters = reduction.iters
    if {i.kind for i in iters} - {"S", "R"} or not all(isinstance(i.dom, int) for i in iters):
        return None
    return reduction, epilogue


class ParallelRows(CpuRule):
    """Kernels that are one reduction block (static extents, output rows ≥ MIN_ROW) followed by at
    most one elementwise block; any other kernel keeps TVM's unscheduled lowering."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.base import try_inline

        blocks = self._blocks(func, target)
        if blocks is None:
            return None
        sch, infos = blocks
        found = one_reduction(try_inline(sch, infos))  # padding folds into the reduction's reads
        if found is None:
            return None
        reduction, epilogue = found
        kinds = reduction.dom_kind()
        rows = [i.dom for i in reduction.iters if i.kind == "S"]
        if len(rows) < 2 or rows[-1] < MIN_ROW:  # an outer loop to share out, a row to vectorize
            return None

        block = reduction.block_rv
        loops = sch.get_loops(block)
        spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
        reduce = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
        sch.reorder(*spatial[:-1], *reduce, spatial[-1])
        outer = sch.fuse(*spatial[:-1])
        sch.parallel(outer)
        if epilogue:
            sch.reverse_compute_at(epilogue[0].block_rv, outer)
        sch.decompose_reduction(block, reduce[0])
        return sch


class ParallelInjective(CpuRule):
    """Kernels with no reduction (a squeeze-excitation's channel multiply, a concatenation, a channel
    shuffle's transpose, a BatchNorm no conv absorbed, an activation no conv took): outer loops in
    parallel on TVM's thread pool.

    Unscheduled, TVM runs them as one thread's loop nest. Measured (bench/README.md, bench_unseen),
    old and new library in turns: DenseNet-BC (a BN-ReLU and a concatenation around every conv)
    54.2 → 52.8 ms; no change beyond noise on the other networks. Kernels of fewer than
    MIN_PARALLEL_ELEMENTS outputs stay on one thread: waking the pool costs more than they do."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.base import try_inline

        blocks = self._blocks(func, target)
        if blocks is None:
            return None
        sch, infos = blocks
        infos = try_inline(sch, infos)
        if len(infos) != 1 or not infos[0].is_injective():
            return None
        extents = [i.dom for i in infos[0].iters]
        if not extents or not all(isinstance(e, int) for e in extents):
            return None
        if math.prod(extents) < MIN_PARALLEL_ELEMENTS:
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if len(loops) == 1:  # one axis: its chunks in parallel
            loops = list(sch.split(loops[0], [None, PARALLEL_CHUNK]))
        # The innermost loop is left to LLVM, which vectorizes it where its reads are contiguous (a
        # transpose's are not: forced vectors there become gathers).
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        return sch


class RegisterTiles(CpuRule):
    """Reduction kernels read as a GEMM (dense layers, full, pointwise and depthwise convolutions):
    an output tile of a few output channels × a few whole vectors of output positions stays in
    registers while the whole reduction runs over it.

    ParallelRows keeps its accumulator row in memory and uses each loaded input once; here each input
    vector loaded serves all the tile's rows and each broadcast value the whole vector, as in a GEMM
    micro-kernel. The vectorized axis is the innermost output axis, which every operand that depends
    on it must read with unit stride. The tile's rows run along an output axis the data does not
    depend on (a conv's output columns in NHWC, its output channels in NCHW); a depthwise conv's data
    depends on every axis, and its rows are output columns read once each. The output rows of a
    pointwise (1×1, stride 1) NCHW convolution are fused into one run of positions. Declined, for
    ParallelRows: tiles that fill no whole vector, and integer kernels on ARM (LLVM vectorizes
    ParallelRows' loop into widening multiply-adds itself).
    """

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.base import try_inline

        blocks = self._blocks(func, target)
        if blocks is None:
            return None
        sch, infos = blocks
        # A padded input stays a buffer of its own (filled in parallel first): inlined, the padding
        # is a bounds check on every broadcast input value.
        # Not for a depthwise conv (a reduction over its window only): there the copy would cost as
        # much as the conv, each input value being read by only a few multiply-adds.
        window_only = any(i.is_reduction() and sum(it.kind == "R" for it in i.iters) < 3 for i in infos)
        pads = (
            []
            if window_only
            else [i for i in infos if not i.is_reduction() and pads_input(sch.get(i.block_rv))]
        )
        found = one_reduction(try_inline(sch, [i for i in infos if i not in pads]))
        if found is None:
            return None
        reduction, epilogue = found
        iters = reduction.iters
        reads_writes = sch.get(reduction.block_rv)
        if str(reads_writes.writes[0].source.dtype) == "int32" and _is_arm(target):
            # An integer conv on ARM (kept NCHW, Target.integer_channels_last): LLVM turns
            # ParallelRows' loop into widening multiply-adds (smlal, sdot), which a register tile
            # of int32 products loses.
            return None
        if fuse_output_positions(sch, reduction, epilogue):
            found = self._reread(sch, {sch.get(p.block_rv).name_hint for p in pads})
            if found is None:
                return None
            reduction, epilogue = found
            iters, reads_writes = reduction.iters, sch.get(reduction.block_rv)
        shape = GemmShape.of(reads_writes, iters, vector_lanes(target))
        if shape is None:
            return None
        for pad in pads:  # the padded input: its rows in parallel
            sch.parallel(sch.get_loops(pad.block_rv)[0])

        block = reduction.block_rv
        if len(shape.positions) == 2:  # whole rows fused: one run of consecutive positions
            outer_rows, inner_rows = sch.split(shape.positions[0].loop_rv, [None, shape.rows])
            tile = sch.fuse(inner_rows, shape.positions[1].loop_rv)
            position = outer_rows
        else:
            position, tile = sch.split(shape.positions[0].loop_rv, [None, shape.columns])
        leading, channel_tile = [], None
        for it in shape.spatial:
            if it is shape.channel:
                channel, channel_tile = sch.split(it.loop_rv, [None, shape.channels])
                leading.append(channel)
            elif it not in shape.positions:
                leading.append(it.loop_rv)
        inner = [channel_tile, tile] if channel_tile is not None else [tile]
        # Consecutive tiles (one thread's run of the parallel loop) share the larger operand's slice,
        # which then stays in cache: the weights of a channels-last conv on a 7×7 map are 25× its
        # input, and streaming them again for every tile of positions bounded those layers.
        leading = [position, *leading] if shape.vectors_larger else [*leading, position]
        reduce = [i.loop_rv for i in shape.reduce]
        sch.reorder(*leading, *reduce, *inner)
        outer = sch.fuse(*leading)
        sch.parallel(outer)
        # The accumulators: a tile-sized buffer allocated in the parallel loop (the consumer reads
        # it there), which LLVM keeps in registers. It stays in "global" scope: TVM puts small
        # global allocations on the stack but "local" ones in a workspace allocated per iteration.
        consumer = epilogue[0].block_rv if epilogue else sch.cache_write(block, 0, "global")
        sch.reverse_compute_at(consumer, outer)
        # The consumer's loops under the tile loop: channels, then rows (a loop only when the tile
        # has several) and columns, fused back into the tile's run of positions.
        loops = sch.get_loops(consumer)[1:]
        positions = 2 if len(shape.positions) == 2 and shape.rows > 1 else 1
        in_vectors(sch, sch.fuse(*loops[-positions:]) if positions > 1 else loops[-1], shape.lanes)
        for loop in loops[:-positions]:
            # Left a loop, LLVM vectorizes it again across the tile's channels: for an int8 depthwise
            # conv, 4-lane vectors 144 bytes apart stored byte by byte.
            sch.unroll(loop)
        if channel_tile is not None:
            sch.unroll(channel_tile)
        # Vectorized before the init is split off: the update alone is no reduction block, which
        # `vectorize` refuses; the init's loops are copied with their kinds.
        in_vectors(sch, tile, shape.lanes)
        if window_only and math.prod(i.dom for i in shape.reduce) <= MAX_UNROLLED_TAPS:
            # A depthwise conv's window unrolled, LLVM loads (and for integers widens) each input
            # vector once for all the taps and tile positions that read it: int8 depthwise convs 14%
            # faster (MobileNetV2's, one core), float ones ~5%.
            for loop in reduce:
                sch.unroll(loop)
        sch.decompose_reduction(block, reduce[0])
        return sch

    @staticmethod
    def _reread(sch: Any, pads: set[str]) -> tuple[Any, list[Any]] | None:
        """The kernel's reduction and epilogue read again after a rewrite of their iterators."""
        from tvm.s_tir.dlight.analysis import normalize_prim_func
        from tvm.s_tir.dlight.base import try_inline

        infos = [i for i in normalize_prim_func(sch) or [] if sch.get(i.block_rv).name_hint not in pads]
        return one_reduction(try_inline(sch, infos))


def _is_arm(target: Any) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith("aarch64")


def in_vectors(sch: Any, loop: Any, lanes: int) -> None:
    """Split `loop` (a multiple of `lanes` long) into unrolled register-wide vectors: LLVM handles a
    <16 x float> well but spills and reassembles a <112 x float> element by element."""
    vectors, lane = sch.split(loop, [None, lanes])
    sch.vectorize(lane)
    sch.unroll(vectors)


def pads_input(block: Any) -> bool:
    """Whether a block writes a larger buffer than the one it reads (a padding copy)."""
    if len(block.reads) != 1 or len(block.writes) != 1:
        return False
    read, written = block.reads[0].source.shape, block.writes[0].source.shape
    return len(read) == len(written) and any(int(w) > int(r) for r, w in zip(read, written, strict=True))
