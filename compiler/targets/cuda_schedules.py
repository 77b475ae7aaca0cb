"""GPU schedules edgecam adds to TVM's untuned CUDA pipeline.

TVM 0.27 schedules every fused kernel with DLight's default rules, tried in order: Matmul, GEMV,
Reduction, GeneralReduction, Fallback. A depthwise convolution matches none of the first three and
lands in GeneralReduction, which gives each output element a block of 256 threads that share its
reduction: for a 3×3 depthwise conv that is 9 useful threads out of 256, and on an H100 such kernels
took 2 of MobileNetV2's 2.7 ms. `ThreadPerOutput` takes these kernels first: one thread per output
element, the short reduction run serially in a register, the fused epilogue (bias, ReLU6) applied by
the same thread. At the other end, `BlockPerOutput` takes kernels with few outputs but long
reductions (1×1 convs on 7×7 maps) away from Matmul's tiles, which would leave most of the GPU idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Reductions this short are cheaper serial in one thread than shared between threads; a 7×7
# depthwise conv (49) and a 7×7 global average pool (49) still qualify, a 1×1 conv over 64 input
# channels (DLight's Matmul rule takes those anyway) would not.
MAX_SERIAL_REDUCTION = 64
THREADS_PER_BLOCK = 256
# A kernel with at most this many outputs and a reduction at least MIN_SHARED_REDUCTION long gets a
# block per output element whose threads share the reduction (DLight's GeneralReduction): DLight's
# Matmul tiles would give a 1×1 conv on a 7×7 map (160 × 49 outputs, 960 inputs) 6 blocks, leaving
# an H100's 132 SMs nearly idle (0.10 ms for 7.5 M MACs).
MAX_BLOCK_PER_OUTPUT = 16384
MIN_SHARED_REDUCTION = 512


def schedule_rules() -> list[Any]:
    """DLight's default GPU rules with edgecam's two placed where they take over."""
    from tvm.s_tir import dlight as dl

    return [
        BlockPerOutput(),
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        ThreadPerOutput(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def default_pipeline(target: Any) -> Any:
    """TVM's default CUDA pipeline (relax/backend/cuda/pipeline.py) with `schedule_rules()`."""
    import tvm
    from tvm.relax.backend.cuda import pipeline
    from tvm.s_tir import dlight as dl

    legalize = pipeline.legalize_passes(target)
    # TVM's legalization ends with its own ApplyDefaultSchedule, which leaves alone what ours (placed
    # just before it, with every rule) already scheduled: only the rule order changes.
    legalize = [*legalize[:-1], dl.ApplyDefaultSchedule(*schedule_rules()), legalize[-1]]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _context: Any) -> Any:
        with target:
            passes = pipeline.library_dispatch_passes(target) + legalize
            passes += pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _rule_base() -> type:
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    return GPUScheduleRule


@dataclass
class _ReductionKernel:
    """A kernel, producers inlined, that is one reduction block followed by elementwise blocks."""

    schedule: Any  # s_tir.Schedule with the producers inlined
    reduction: Any  # SBlockInfo of the reduction block
    epilogue: list[Any]  # SBlockInfo of the blocks after it
    outputs: int  # spatial iterations of the reduction block
    length: int  # reduction iterations per output


def _reduction_kernel(func: Any) -> _ReductionKernel | None:
    """`func` as a _ReductionKernel; None for any other kernel or symbolic extents."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    infos = try_inline(sch, infos)  # padding and other producers fold into the reduction's reads
    if not infos or not infos[0].is_reduction() or any(i.is_reduction() for i in infos[1:]):
        return None
    extents = {"S": 1, "R": 1}
    for i in infos[0].iters:
        if not isinstance(i.dom, int) or i.kind not in extents:
            return None
        extents[i.kind] *= i.dom
    return _ReductionKernel(sch, infos[0], infos[1:], extents["S"], extents["R"])


class BlockPerOutput(_rule_base()):  # type: ignore[misc]
    """A block per output element for kernels with few outputs and a long reduction (≤
    MAX_BLOCK_PER_OUTPUT outputs, ≥ MIN_SHARED_REDUCTION steps), scheduled by DLight's
    GeneralReduction; any other kernel is left to the next rule."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        from tvm.s_tir import dlight as dl

        if not self.is_target_available(target):
            return None
        kernel = _reduction_kernel(func)
        if kernel is None or kernel.outputs > MAX_BLOCK_PER_OUTPUT or kernel.length < MIN_SHARED_REDUCTION:
            return None
        return dl.gpu.GeneralReduction().apply(func, target, tunable)


class ThreadPerOutput(_rule_base()):  # type: ignore[misc]
    """One thread per output element for a kernel with one short reduction (≤ MAX_SERIAL_REDUCTION
    iterations) followed by at most one elementwise block; any other kernel is left to the next rule."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        if not self.is_target_available(target):
            return None
        kernel = _reduction_kernel(func)
        if kernel is None or kernel.length > MAX_SERIAL_REDUCTION:
            return None
        epilogue = kernel.epilogue
        if len(epilogue) > 1 or (epilogue and not epilogue[0].is_injective()):
            return None

        sch, block = kernel.schedule, kernel.reduction.block_rv
        loops, kinds = sch.get_loops(block), kernel.reduction.dom_kind()
        spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
        reduce = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
        sch.reorder(*spatial, *reduce)
        bx, tx = sch.split(sch.fuse(*spatial), factors=[None, THREADS_PER_BLOCK])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        if epilogue:
            # The reduction's result lives in a register and the same thread finishes the element.
            sch.reverse_compute_at(epilogue[0].block_rv, tx)
            sch.set_scope(block, 0, "local")
        sch.decompose_reduction(block, reduce[0])
        return sch
