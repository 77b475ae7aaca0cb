"""Fusing a channels-last conv's output rows and columns into one axis of positions, for RegisterTiles
(compiler/targets/cpu_schedules.py): the convs no packed GEMM takes (compiler/lowering/packed_gemm.py),
such as the integer convs of an int8 model on an x86 CPU without VNNI.

A channels-last conv's register tile is a few output positions × a few vectors of output channels;
each step broadcasts one input value per position. Along a single output row the tile can only take
a divisor of the row's width: on a 7×7 map 1 or 7 positions, and 7 positions × 2 vectors overflows
AVX2's 16 registers, so the tile was 1 position × 10 vectors, one load per multiply-add (float 1×1
convs on 7×7 maps ran at 15-18 GMAC/s on a 2-core znver3, a quarter of what ONNX Runtime does with
them). With rows and columns one axis, a tile takes positions across rows.

The fused axis has to be one axis in the buffer between the conv and its epilogue too: the epilogue
is computed per tile, and a tile's positions that wrap a row span no rectangle of a [H, W] buffer.
"""

from __future__ import annotations

from typing import Any


def fuse_output_positions(sch: Any, reduction: Any, epilogue: list[Any]) -> bool:
    """Rewrite `reduction` (a dlight SBlockInfo of a channels-last conv) and its epilogue (or, without
    one, a write-back block made here) to iterate over row × column positions, and the buffer between
    them to [.., H·W, C]. False, changing nothing, when the kernel has no such pair of axes: the
    output's row and column, adjacent spatial iterators that no operand read along the output
    channels (the vectorized axis) depends on, both longer than 1."""
    from tvm.tirx.analysis import undefined_vars

    block = sch.get(reduction.block_rv)
    write = block.writes[0]
    if len(write.region) < 3:
        return False
    spatial = [i for i in reduction.iters if i.kind == "S"]
    axes = [_iter_at(spatial, index.min) for index in write.region[-3:]]
    if any(a is None for a in axes) or axes[-1] is not spatial[-1]:
        return False
    rows, columns, channels = axes
    order = [i.var for i in reduction.iters]
    at = _index_of(order, rows.var)
    if _index_of(order, columns.var) != at + 1 or min(rows.dom, columns.dom) < 2:
        return False
    # The operands read along the output channels must not depend on the positions (a depthwise
    # conv's input does: its tile is a run of one row, as before).
    for read in block.reads:
        used = {v for r in read.region for v in undefined_vars(r.min)}
        if any(v.same_as(channels.var) for v in used) and any(
            v.same_as(rows.var) or v.same_as(columns.var) for v in used
        ):
            return False
    width = int(columns.dom)
    consumer = epilogue[0].block_rv if epilogue else sch.cache_write(reduction.block_rv, 0, "global")
    if not _fuse_iters(sch, consumer, sch.get(reduction.block_rv).writes[0].source, width):
        return False
    _fuse_block_iters(sch, reduction.block_rv, at, width)
    ndim = len(write.region)
    sch.transform_layout(reduction.block_rv, ("write", 0), _fused_buffer_map(ndim, width))
    return True


def _iter_at(spatial: list[Any], index: Any) -> Any:
    return next((i for i in spatial if index.same_as(i.var)), None)


def _index_of(vars_: list[Any], var: Any) -> int:
    return next(k for k, v in enumerate(vars_) if v.same_as(var))


def _fuse_iters(sch: Any, consumer: Any, buffer: Any, width: int) -> bool:
    """Fuse the consumer's iterators that read `buffer`'s row and column axes; False when its reads
    of the buffer are not plain iterators in adjacent order."""
    block = sch.get(consumer)
    reads = [r for r in block.reads if r.source.same_as(buffer)]
    if len(reads) != 1:
        return False
    order = [iv.var for iv in block.iter_vars]
    region = reads[0].region
    try:
        at = _index_of(order, region[-3].min)
        if not region[-2].min.same_as(order[at + 1]):
            return False
    except (StopIteration, IndexError):
        return False
    _fuse_block_iters(sch, consumer, at, width)
    return True


def _fuse_block_iters(sch: Any, block: Any, at: int, width: int) -> None:
    """Iterators `at` and `at + 1` (extent `width`) of `block` become one."""
    count = len(sch.get(block).iter_vars)

    def fused(*iters: Any) -> list[Any]:
        return [*iters[:at], iters[at] * width + iters[at + 1], *iters[at + 2 :]]

    sch.transform_block_layout(block, _index_map(count, fused))


def _fused_buffer_map(ndim: int, width: int) -> Any:
    def fused(*dims: Any) -> list[Any]:
        return [*dims[: ndim - 3], dims[-3] * width + dims[-2], dims[-1]]

    return _index_map(ndim, fused)


def _index_map(arity: int, body: Any) -> Any:
    from tvm.tirx import IndexMap

    return IndexMap.from_func(body, ndim=arity)
