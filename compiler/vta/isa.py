"""The VTA instruction set: instructions and micro-ops as typed values, encoded to and decoded from the
128-bit / 32-bit words the hardware fetches (docs/vta.md, "Instruction encoding").

Field positions are not tabulated here but derived from the configuration the way a C compiler lays out
VTA's `uint64_t` bit-field structs: fields are packed from bit 0 upward in declaration order, and a field
that would cross a 64-bit boundary starts at the next 64-bit word instead (the skipped bits are zero).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from functools import lru_cache
from typing import ClassVar

from edgecam.compiler.vta.config import INSN_BYTES, VTAConfig
from edgecam.compiler.vta.errors import VTAEncodingError


class Opcode(IntEnum):
    LOAD = 0
    STORE = 1
    GEMM = 2
    FINISH = 3
    ALU = 4


class MemType(IntEnum):
    UOP = 0
    WGT = 1
    INP = 2
    ACC = 3
    OUT = 4
    ACC_8BIT = 5  # VTA's functional simulator only; the HLS design has no such load


class AluOp(IntEnum):
    MIN = 0
    MAX = 1
    ADD = 2
    SHR = 3
    MUL = 4  # encodable, but the HLS design leaves the accumulator unchanged (docs/vta.md)


# The four dependency flags, bits 3..6 of every instruction ("prev"/"next" along load → compute → store).
_DEPS = (("pop_prev_dep", 1), ("pop_next_dep", 1), ("push_prev_dep", 1), ("push_next_dep", 1))
# Memory fields have fixed widths whatever the configuration.
_MEM = (
    ("memory_type", 3),
    ("sram_base", 16),
    ("dram_base", 32),
    ("y_size", 16),
    ("x_size", 16),
    ("x_stride", 16),
    ("y_pad_0", 4),
    ("y_pad_1", 4),
    ("x_pad_0", 4),
    ("x_pad_1", 4),
)
LOOP_ITER_BITS = 14


@dataclass(frozen=True)
class _Deps:
    pop_prev_dep: bool = False
    pop_next_dep: bool = False
    push_prev_dep: bool = False
    push_next_dep: bool = False


@dataclass(frozen=True)
class MemInsn(_Deps):
    """LOAD or STORE of a 2-D block: y_size rows of x_size elements, rows x_stride elements apart in
    DRAM; dram_base counts elements of memory_type, not bytes. x_size 0 is a no-op that moves tokens."""

    OPCODE: ClassVar[Opcode]
    memory_type: MemType = MemType.INP
    sram_base: int = 0
    dram_base: int = 0
    y_size: int = 0
    x_size: int = 0
    x_stride: int = 0
    y_pad_0: int = 0
    y_pad_1: int = 0
    x_pad_0: int = 0
    x_pad_1: int = 0


@dataclass(frozen=True)
class Load(MemInsn):
    OPCODE: ClassVar[Opcode] = Opcode.LOAD


@dataclass(frozen=True)
class Store(MemInsn):
    OPCODE: ClassVar[Opcode] = Opcode.STORE
    memory_type: MemType = MemType.OUT


@dataclass(frozen=True)
class _Loop(_Deps):
    """Runs micro-ops [uop_bgn, uop_end) inside two affine loops (iter_out × iter_in); each index is the
    micro-op's plus i·factor_out + j·factor_in."""

    reset_reg: bool = False
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0


@dataclass(frozen=True)
class Gemm(_Loop):
    """ACC[dst] += INP[src] · WGT[wgt]ᵀ per micro-op and loop step (reset_reg: ACC[dst] = 0 instead)."""

    OPCODE: ClassVar[Opcode] = Opcode.GEMM
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0


@dataclass(frozen=True)
class Alu(_Loop):
    """ACC[dst] = op(ACC[dst], imm if use_imm else ACC[src]) per micro-op and loop step."""

    OPCODE: ClassVar[Opcode] = Opcode.ALU
    alu_opcode: AluOp = AluOp.ADD
    use_imm: bool = False
    imm: int = 0


@dataclass(frozen=True)
class Finish(_Deps):
    """Raises the done flag the driver polls; the compute module runs it after everything before it."""

    OPCODE: ClassVar[Opcode] = Opcode.FINISH


Insn = Load | Store | Gemm | Alu | Finish


@dataclass(frozen=True)
class Uop:
    """A micro-op: ACC destination, source (INP for GEMM, ACC for ALU) and WGT indices."""

    dst_idx: int
    src_idx: int
    wgt_idx: int = 0


Layout = dict[str, tuple[int, int]]  # field → (first bit, width)


def _pack(widths: Sequence[tuple[str, int]], what: str) -> Layout:
    layout: Layout = {}
    pos = 0
    for name, width in widths:
        if pos // 64 != (pos + width - 1) // 64:
            pos = (pos // 64 + 1) * 64  # no field straddles a 64-bit word
        layout[name] = (pos, width)
        pos += width
    if pos > INSN_BYTES * 8:
        raise VTAEncodingError(f"{what} instruction needs {pos} bits for this configuration, more than 128")
    return layout


@lru_cache(maxsize=16)
def layouts(config: VTAConfig) -> dict[str, Layout]:
    """The bit layout of every instruction format (MEM, GEMM, ALU) and of the micro-op for `config`."""
    head = (("opcode", 3), *_DEPS)
    loop = (
        ("reset_reg", 1),
        ("uop_bgn", config.log_uop_depth),
        ("uop_end", config.log_uop_depth + 1),  # exclusive bound: one more bit
        ("iter_out", LOOP_ITER_BITS),
        ("iter_in", LOOP_ITER_BITS),
        ("dst_factor_out", config.log_acc_depth),
        ("dst_factor_in", config.log_acc_depth),
    )
    gemm_src = (("src_factor_out", config.log_inp_depth), ("src_factor_in", config.log_inp_depth))
    alu_src = (("src_factor_out", config.log_acc_depth), ("src_factor_in", config.log_acc_depth))
    wgt = (("wgt_factor_out", config.log_wgt_depth), ("wgt_factor_in", config.log_wgt_depth))
    alu = (("alu_opcode", 3), ("use_imm", 1), ("imm", 16))
    uop = (
        ("dst_idx", config.log_acc_depth),
        ("src_idx", max(config.log_acc_depth, config.log_inp_depth)),
        ("wgt_idx", config.log_wgt_depth),
    )
    return {
        "MEM": _pack(head + _MEM, "LOAD/STORE"),
        "GEMM": _pack(head + loop + gemm_src + wgt, "GEMM"),
        "ALU": _pack(head + loop + alu_src + alu, "ALU"),
        "FINISH": _pack(head, "FINISH"),
        "UOP": _pack(uop, "micro-op"),
    }


def _format(cls: type) -> str:
    return "MEM" if issubclass(cls, MemInsn) else cls.__name__.upper()


def _put(layout: Layout, values: dict[str, int], what: str) -> int:
    word = 0
    for name, (pos, width) in layout.items():
        value = int(values[name])
        if name == "imm":  # the only signed field: two's complement int16
            if not -(1 << 15) <= value < 1 << 15:
                raise VTAEncodingError(f"{what} field imm={value} does not fit int16 (-32768..32767)")
            value &= 0xFFFF
        elif not 0 <= value < 1 << width:
            raise VTAEncodingError(
                f"{what} field {name}={value} does not fit its {width} bits (0..{(1 << width) - 1})"
            )
        word |= value << pos
    return word


def encode(insn: Insn, config: VTAConfig) -> int:
    """The instruction as a 128-bit integer (bit 0 = LSB); a value past its field's width is refused
    naming the field."""
    values = {f.name: getattr(insn, f.name) for f in fields(insn)}
    values["opcode"] = insn.OPCODE
    return _put(layouts(config)[_format(type(insn))], values, insn.OPCODE.name)


def _get(layout: Layout, word: int) -> dict[str, int]:
    return {name: (word >> pos) & ((1 << width) - 1) for name, (pos, width) in layout.items()}


def decode(word: int, config: VTAConfig) -> Insn:
    """The instruction a 128-bit word holds; an unknown opcode, memory type or ALU opcode, or a set
    padding bit, is refused naming it."""
    if not 0 <= word < 1 << 128:
        raise VTAEncodingError(f"instruction word {word:#x} is not a 128-bit unsigned value")
    opcode = word & 7
    classes: dict[int, type[Insn]] = {0: Load, 1: Store, 2: Gemm, 3: Finish, 4: Alu}
    if opcode not in classes:
        raise VTAEncodingError(
            f"instruction {word:#034x}: opcode {opcode} is none of {[o.name for o in Opcode]}"
        )
    cls = classes[opcode]
    layout = layouts(config)[_format(cls)]
    values = _get(layout, word)
    if cls is not Finish:  # FINISH's other bits are don't-care; every other format has padding that must be 0
        used = sum(((1 << w) - 1) << p for p, w in layout.values())
        if word & ~used:
            raise VTAEncodingError(
                f"{cls.OPCODE.name} instruction {word:#034x}: padding bits {word & ~used:#x} are set"
            )
    del values["opcode"]
    try:
        if "memory_type" in values:
            values["memory_type"] = MemType(values["memory_type"])
        if "alu_opcode" in values:
            values["alu_opcode"] = AluOp(values["alu_opcode"])
    except ValueError as err:
        raise VTAEncodingError(f"{cls.OPCODE.name} instruction {word:#034x}: {err}") from None
    if "imm" in values and values["imm"] >= 1 << 15:
        values["imm"] -= 1 << 16
    kwargs = {name: bool(v) if name in _BOOLS else v for name, v in values.items()}
    return cls(**kwargs)  # type: ignore[arg-type]


_BOOLS = {name for name, _ in _DEPS} | {"reset_reg", "use_imm"}


def encode_uop(uop: Uop, config: VTAConfig) -> int:
    """The micro-op as a 32-bit integer; an index past its field's width is refused naming the field."""
    return _put(layouts(config)["UOP"], {f.name: getattr(uop, f.name) for f in fields(uop)}, "micro-op")


def decode_uop(word: int, config: VTAConfig) -> Uop:
    return Uop(**_get(layouts(config)["UOP"], word))


def encode_program(insns: Iterable[Insn], config: VTAConfig) -> bytes:
    """The instruction stream the fetch module reads: 16 bytes per instruction, little-endian."""
    return b"".join(encode(insn, config).to_bytes(INSN_BYTES, "little") for insn in insns)


def decode_program(data: bytes, config: VTAConfig) -> list[Insn]:
    if len(data) % INSN_BYTES:
        raise VTAEncodingError(f"instruction stream of {len(data)} bytes is not a multiple of {INSN_BYTES}")
    return [
        decode(int.from_bytes(data[i : i + INSN_BYTES], "little"), config)
        for i in range(0, len(data), INSN_BYTES)
    ]


def encode_uops(uops: Iterable[Uop], config: VTAConfig) -> bytes:
    """Micro-ops as the LOAD UOP instruction reads them: 4 bytes each, little-endian."""
    words = [encode_uop(u, config) for u in uops]
    return struct.pack(f"<{len(words)}I", *words)
