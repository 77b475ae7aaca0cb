"""A bit-exact functional simulator of the VTA core as the HLS design behaves (docs/vta.md, "Simulator").

The load, compute and store modules run their instructions in order, synchronised by the dependency
queues (pipeline.run); among modules free at the same moment the order is drawn from `seed`, so a program
whose result depends on the interleaving (a missing token) gives different results under different
seeds. What the HLS design does not implement (ALU MUL, padded WGT loads, ACC_8BIT loads, shifts by a
negative amount) is refused rather than given one simulator's meaning, as is every SRAM or DRAM access
out of range (naming the instruction).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecam.compiler.vta import pipeline
from edgecam.compiler.vta.config import INSN_BYTES, VTAConfig
from edgecam.compiler.vta.errors import VTASimError
from edgecam.compiler.vta.isa import (
    Alu,
    AluOp,
    Gemm,
    Insn,
    Load,
    MemInsn,
    MemType,
    Store,
    decode_program,
    encode_program,
)
from edgecam.compiler.vta.isa import layouts as isa_layouts
from edgecam.compiler.vta.races import RaceChecker

# Rows of a GEMM's flattened loop computed per numpy step: bounds the gathered weights to ~16 MiB.
_GEMM_CHUNK = 16384
# The ALU's operations on int64 copies of the int32 accumulators (the result is wrapped back to int32).
_ALU_OPS: dict[AluOp, Callable[[np.ndarray, Any], np.ndarray]] = {
    AluOp.MIN: np.minimum,
    AluOp.MAX: np.maximum,
    AluOp.ADD: np.add,
    AluOp.SHR: lambda a, b: a >> (b & 0x1F),  # arithmetic: numpy shifts signed integers with their sign
}


class Dram:
    """Byte-addressed memory standing in for the board's physically contiguous buffers. Addresses start
    at one page so that 0 is never a valid buffer (a forgotten base shows as an out-of-range access)."""

    def __init__(self, size: int = 64 << 20) -> None:
        self.data = np.zeros(size, np.uint8)
        self._next = 4096

    def alloc(self, nbytes: int, align: int = 4096) -> int:
        """A fresh `align`-aligned region of `nbytes`; VTA addresses DRAM in elements of up to 256 B, so
        page alignment suits every memory type."""
        address = -(-self._next // align) * align
        if address + nbytes > self.data.size:
            raise VTASimError(
                f"simulated DRAM of {self.data.size} B cannot hold {nbytes} B more; pass a larger "
                "Dram(size=...)"
            )
        self._next = address + nbytes
        return address

    def write(self, address: int, array: np.ndarray | bytes) -> None:
        raw = (
            np.frombuffer(array, np.uint8)
            if isinstance(array, bytes)
            else np.ascontiguousarray(array).view(np.uint8).ravel()
        )
        self.data[address : address + raw.size] = raw

    def read(self, address: int, nbytes: int) -> np.ndarray:
        return self.data[address : address + nbytes].copy()


@dataclass
class Counters:
    """What the simulator executed: GEMM micro-op steps (MACs on one block), reset steps, ALU steps,
    and DRAM bytes read per memory type and written."""

    gemm_uops: int = 0
    gemm_reset_uops: int = 0
    alu_uops: int = 0
    load_bytes: Counter[str] = field(default_factory=Counter)
    store_bytes: Counter[str] = field(default_factory=Counter)


class Simulator:
    """One VTA core with its SRAMs, attached to `dram`. `execute=False` only counts and checks bounds,
    as VTA's own simulator does in its debug mode, for programs too large to compute in numpy."""

    def __init__(self, config: VTAConfig, dram: Dram, seed: int | None = 0, execute: bool = True) -> None:
        self.config, self.dram, self.execute = config, dram, execute
        self._rng = random.Random(seed) if seed is not None else None
        b, n = config.batch, config.block
        self.inp = np.zeros((config.depth("INP"), b, n), np.int8)
        self.wgt = np.zeros((config.depth("WGT"), n, n), np.int8)
        self.acc = np.zeros((config.depth("ACC"), b, n), np.int32)
        self.out = np.zeros((config.depth("OUT"), b, n), np.int8)
        self.uop = np.zeros((3, config.depth("UOP")), np.int64)  # dst, src, wgt per micro-op
        # OUT elements last written by a reset GEMM: HLS leaves the pre-reset sum there, VTA's own
        # simulator zero, so a STORE of one is refused as not portable.
        self.out_stale = np.zeros(config.depth("OUT"), bool)
        self.races = RaceChecker(config)
        self.counters = Counters()

    def run_program(self, program: Sequence[Insn]) -> pipeline.Timeline:
        """Write `program` to DRAM and run it as the driver would: the fetch module reads it from there."""
        data = encode_program(program, self.config)
        address = self.dram.alloc(len(data))
        self.dram.write(address, data)
        return self.run(address, len(program))

    def run(self, insn_address: int, insn_count: int) -> pipeline.Timeline:
        """Fetch `insn_count` instructions at `insn_address` and run them to FINISH."""
        program = decode_program(self.dram.read(insn_address, insn_count * INSN_BYTES).tobytes(), self.config)
        choose = self._rng.choice if self._rng else None
        return pipeline.run(program, self._step, choose)

    def _step(self, module: str, index: int, insn: Insn, start: float, clock: pipeline.Clock) -> float:
        where = pipeline.describe(index, insn)
        self.races.at(index, clock)
        if isinstance(insn, Load):
            self._load(insn, where)
        elif isinstance(insn, Store):
            self._store(insn, where)
        elif isinstance(insn, Gemm):
            self._gemm(insn, where)
        elif isinstance(insn, Alu):
            self._alu(insn, where)
        return start  # the functional simulator takes no time; order comes from the tokens alone

    # LOAD / STORE ---------------------------------------------------------------------------------------

    def _dram_elements(self, insn: MemInsn, size: int, where: str) -> np.ndarray:
        """DRAM element indices of the y_size × x_size window, after checking they lie inside DRAM."""
        rows = insn.dram_base + np.arange(insn.y_size)[:, None] * insn.x_stride
        index = rows + np.arange(insn.x_size)[None, :]
        if (int(index.max()) + 1) * size > self.dram.data.size:
            raise VTASimError(
                f"{where}: DRAM element {int(index.max())} of {size} B lies past the end of DRAM"
            )
        return index.ravel()

    def _check_sram(self, memory: str, first: int, count: int, where: str) -> None:
        depth = self.config.depth(memory)
        if first + count > depth:
            raise VTASimError(
                f"{where}: SRAM {memory} elements [{first}, {first + count}) lie past its {depth} elements"
            )

    def _load(self, insn: Load, where: str) -> None:
        if insn.x_size == 0:
            return  # a NOP that only moves tokens
        kind = insn.memory_type
        if kind is MemType.ACC_8BIT:
            raise VTASimError(
                f"{where}: ACC_8BIT loads exist only in VTA's functional simulator, not in the HLS design"
            )
        pads = (insn.y_pad_0, insn.y_pad_1, insn.x_pad_0, insn.x_pad_1)
        if kind in (MemType.WGT, MemType.UOP) and any(pads):
            raise VTASimError(
                f"{where}: padding on a {kind.name} load (the HLS design ignores it, VTA's simulator applies "
                "it); load without pads"
            )
        size = self.config.element_bytes(kind.name)
        cols, rows = insn.x_pad_0 + insn.x_size + insn.x_pad_1, insn.y_pad_0 + insn.y_size + insn.y_pad_1
        self._check_sram(kind.name, insn.sram_base, rows * cols, where)
        elements = self._dram_elements(insn, size, where)
        if kind in (MemType.INP, MemType.WGT):
            self.races.write(kind.name, np.arange(insn.sram_base, insn.sram_base + rows * cols), where)
        self.counters.load_bytes[kind.name] += elements.size * size
        if not self.execute:
            return
        raw = self.dram.data[: self.dram.data.size // size * size].reshape(-1, size)[elements]
        if kind is MemType.UOP:
            words = raw.view("<u4").ravel().astype(np.int64)
            for row, (pos, width) in enumerate(isa_layouts(self.config)["UOP"].values()):
                self.uop[row, insn.sram_base : insn.sram_base + words.size] = (words >> pos) & (
                    (1 << width) - 1
                )
            return
        buffers: dict[MemType, np.ndarray] = {
            MemType.INP: self.inp,
            MemType.WGT: self.wgt,
            MemType.ACC: self.acc,
        }
        target = buffers[kind]
        window = raw.view(target.dtype).reshape(insn.y_size, insn.x_size, *target.shape[1:])
        block = np.zeros((rows, cols, *target.shape[1:]), target.dtype)
        block[insn.y_pad_0 : insn.y_pad_0 + insn.y_size, insn.x_pad_0 : insn.x_pad_0 + insn.x_size] = window
        target[insn.sram_base : insn.sram_base + rows * cols] = block.reshape(rows * cols, *target.shape[1:])

    def _store(self, insn: Store, where: str) -> None:
        if insn.x_size == 0:
            return
        if insn.memory_type is not MemType.OUT:
            raise VTASimError(
                f"{where}: STORE of memory type {insn.memory_type.name}; the store module writes OUT only"
            )
        if any((insn.y_pad_0, insn.y_pad_1, insn.x_pad_0, insn.x_pad_1)):
            raise VTASimError(
                f"{where}: STORE with padding; the store module does not pad, set the pads to 0"
            )
        size = self.config.element_bytes("OUT")
        self._check_sram("OUT", insn.sram_base, insn.y_size * insn.x_size, where)
        self.races.read("OUT", np.arange(insn.sram_base, insn.sram_base + insn.y_size * insn.x_size), where)
        stale = np.flatnonzero(self.out_stale[insn.sram_base : insn.sram_base + insn.y_size * insn.x_size])
        if stale.size:
            raise VTASimError(
                f"{where}: OUT element {insn.sram_base + int(stale[0])} was last written by a reset GEMM, "
                "whose OUT value differs between the HLS design and VTA's simulator; store after GEMM or ALU"
            )
        elements = self._dram_elements(insn, size, where)
        self.counters.store_bytes["OUT"] += elements.size * size
        if self.execute:
            rows = self.out[insn.sram_base : insn.sram_base + elements.size].view(np.uint8).reshape(-1, size)
            self.dram.data[: self.dram.data.size // size * size].reshape(-1, size)[elements] = rows

    # GEMM / ALU -----------------------------------------------------------------------------------------

    def _indices(self, insn: Gemm | Alu, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dst, src and wgt indices of every step of the instruction's two loops over its micro-ops, in
        the order the hardware runs them."""
        self._check_sram("UOP", 0, insn.uop_end, where)
        uops = self.uop[:, insn.uop_bgn : max(insn.uop_bgn, insn.uop_end)]
        i = np.arange(insn.iter_out)[:, None, None]
        j = np.arange(insn.iter_in)[None, :, None]
        dst = (uops[0] + i * insn.dst_factor_out + j * insn.dst_factor_in).ravel()
        src = (uops[1] + i * insn.src_factor_out + j * insn.src_factor_in).ravel()
        wgt_out, wgt_in = (insn.wgt_factor_out, insn.wgt_factor_in) if isinstance(insn, Gemm) else (0, 0)
        wgt = (uops[2] + i * wgt_out + j * wgt_in).ravel()
        return dst, src, wgt

    def _check_index(self, memory: str, index: np.ndarray, what: str, where: str) -> None:
        if index.size and int(index.max()) >= self.config.depth(memory):
            raise VTASimError(
                f"{where}: {what} index {int(index.max())} lies past the {self.config.depth(memory)} "
                f"{memory} elements"
            )

    def _gemm(self, insn: Gemm, where: str) -> None:
        dst, src, wgt = self._indices(insn, where)
        self._check_index("ACC", dst, "dst", where)
        self.races.write("OUT", dst, where)  # every GEMM step writes OUT, a reset one too
        self.out_stale[dst] = bool(insn.reset_reg)
        if insn.reset_reg:
            self.counters.gemm_reset_uops += dst.size
            if self.execute:
                self.out[dst] = self.acc[dst].astype(np.int8)  # HLS writes the pre-reset sum to OUT
                self.acc[dst] = 0
            return
        self._check_index("INP", src, "src", where)
        self._check_index("WGT", wgt, "wgt", where)
        self.races.read("INP", src, where)
        self.races.read("WGT", wgt, where)
        # The HLS GEMM loop is pipelined at one step per cycle with the ACC read-modify-write assumed
        # independent: a destination written again within two steps reads a stale sum.
        near = dst[1:] == dst[:-1]  # near[k]: step k+1 writes what step k or k-1 wrote
        near[1:] |= dst[2:] == dst[:-2]
        repeat = np.flatnonzero(near)
        if repeat.size:
            raise VTASimError(
                f"{where}: ACC index {int(dst[repeat[0] + 1])} is written by two GEMM steps less than 3 "
                "apart (pipeline hazard); reorder the loops"
            )
        self.counters.gemm_uops += dst.size
        if not self.execute:
            return
        for at in range(0, dst.size, _GEMM_CHUNK):
            part = slice(at, at + _GEMM_CHUNK)
            sums = np.einsum(
                "nbc,noc->nbo", self.inp[src[part]].astype(np.int32), self.wgt[wgt[part]].astype(np.int32)
            )
            np.add.at(self.acc, dst[part], sums)
        touched = np.unique(dst)
        self.out[touched] = self.acc[touched].astype(np.int8)  # low 8 bits, no saturation

    def _alu(self, insn: Alu, where: str) -> None:
        if insn.alu_opcode is AluOp.MUL:
            raise VTASimError(
                f"{where}: ALU MUL is not implemented by the HLS design (it leaves ACC unchanged); use SHR "
                "or ADD"
            )
        dst, src, _ = self._indices(insn, where)
        self._check_index("ACC", dst, "dst", where)
        if not insn.use_imm:
            self._check_index("ACC", src, "src", where)
        self.counters.alu_uops += dst.size
        self.races.write("OUT", dst, where)
        self.out_stale[dst] = False
        if insn.alu_opcode is AluOp.SHR:
            amounts = np.array([insn.imm]) if insn.use_imm else self.acc[src]
            # Bit 4 of the 5-bit amount set: a left shift in HLS, a right shift by 16 or more in Chisel.
            if np.any(amounts & 0x10):
                raise VTASimError(
                    f"{where}: SHR by a negative 5-bit amount shifts left in HLS and right in the Chisel "
                    "design; not portable"
                )
        if not self.execute or not dst.size:
            return
        independent = np.unique(dst).size == dst.size and (
            insn.use_imm or np.array_equal(src, dst) or not np.intersect1d(src, dst).size
        )
        steps = [slice(None)] if independent else [slice(k, k + 1) for k in range(dst.size)]
        for part in steps:  # one vector step when no step reads another's result, else in order
            a = self.acc[dst[part]].astype(np.int64)
            b = np.int64(insn.imm) if insn.use_imm else self.acc[src[part]].astype(np.int64)
            result = _ALU_OPS[insn.alu_opcode](a, b)
            self.acc[dst[part]] = result.astype(np.int32)  # wraps at 32 bits
            self.out[dst[part]] = self.acc[dst[part]].astype(np.int8)
