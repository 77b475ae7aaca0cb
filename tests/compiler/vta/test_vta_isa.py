"""The VTA configuration and instruction encoder: every golden vector of the spec, encode and decode."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecam.compiler.vta.config import PRESETS, VTAConfig, preset
from edgecam.compiler.vta.errors import VTAConfigError, VTAEncodingError
from edgecam.compiler.vta.isa import (
    Alu,
    AluOp,
    Finish,
    Gemm,
    Insn,
    Load,
    MemType,
    Store,
    Uop,
    decode,
    decode_program,
    decode_uop,
    encode,
    encode_program,
    encode_uop,
    layouts,
)

DEFAULT = VTAConfig()

# The spec's golden vectors (VTA's hw_spec.h structs compiled with gcc for the default configuration).
GOLDEN: list[tuple[Insn, int]] = [
    (
        Load(
            pop_next_dep=True,
            push_next_dep=True,
            memory_type=MemType.INP,
            sram_base=0x123,
            dram_base=0xABCDEF,
            y_size=14,
            x_size=14,
            x_stride=56,
            y_pad_0=1,
            y_pad_1=1,
            x_pad_0=1,
            x_pad_1=1,
        ),
        0x11110038000E000E0002AF37BC048D50,
    ),
    (
        Store(
            pop_prev_dep=True,
            push_prev_dep=True,
            sram_base=7,
            dram_base=0x100,
            y_size=2,
            x_size=3,
            x_stride=5,
        ),
        0x00000005000300020000000400001E29,
    ),
    (
        Gemm(
            pop_prev_dep=True,
            push_prev_dep=True,
            uop_bgn=5,
            uop_end=17,
            iter_out=3,
            iter_in=9,
            dst_factor_out=9,
            dst_factor_in=1,
            src_factor_out=11,
            src_factor_in=1,
        ),
        0x0000000202C00809001200180220052A,
    ),
    (
        Alu(
            push_next_dep=True,
            uop_bgn=100,
            uop_end=101,
            iter_out=4,
            iter_in=16,
            dst_factor_out=16,
            dst_factor_in=1,
            src_factor_out=16,
            src_factor_in=1,
            alu_opcode=AluOp.SHR,
            use_imm=True,
            imm=-3,
        ),
        0xFFFDB00204000810002000200CA06444,
    ),
    (Finish(), 0x3),
]


@pytest.mark.parametrize(("insn", "word"), GOLDEN, ids=[type(i).__name__ for i, _ in GOLDEN])
def test_golden_vectors_encode_and_decode(insn: Insn, word: int) -> None:
    assert encode(insn, DEFAULT) == word
    assert decode(word, DEFAULT) == insn
    data = encode_program([insn], DEFAULT)
    assert data == word.to_bytes(16, "little")  # the byte stream is the value little-endian
    assert decode_program(data, DEFAULT) == [insn]


def test_golden_micro_op() -> None:
    uop = Uop(dst_idx=0x123, src_idx=0x456, wgt_idx=0x3AB)
    assert encode_uop(uop, DEFAULT) == 0xEAE2B123
    assert decode_uop(0xEAE2B123, DEFAULT) == uop


def test_default_layout_follows_the_no_straddle_rule() -> None:
    """Fields are LSB-first and none crosses bit 64: the one gap per format sits just below bit 64 and
    the second word is full."""
    lay = layouts(DEFAULT)
    assert lay["MEM"]["dram_base"] == (26, 32) and lay["MEM"]["y_size"] == (64, 16)
    assert lay["GEMM"]["iter_in"] == (49, 14) and lay["GEMM"]["dst_factor_out"] == (64, 11)
    assert lay["ALU"]["alu_opcode"] == (108, 3) and lay["ALU"]["imm"] == (112, 16)
    for name in ("MEM", "GEMM", "ALU"):
        assert max(p + w for p, w in lay[name].values()) == 128
        assert all(p // 64 == (p + w - 1) // 64 for p, w in lay[name].values())
    assert sum(w for _, w in lay["UOP"].values()) == 32


@pytest.mark.parametrize(
    ("insn", "field"),
    [
        (Gemm(iter_out=1 << 14), "iter_out"),
        (Gemm(uop_bgn=1 << 13), "uop_bgn"),
        (Gemm(wgt_factor_in=1 << 10), "wgt_factor_in"),
        (Alu(imm=1 << 15), "imm"),
        (Alu(imm=-(1 << 15) - 1), "imm"),
        (Load(x_pad_0=16), "x_pad_0"),
        (Load(dram_base=1 << 32), "dram_base"),
        (Store(sram_base=-1), "sram_base"),
    ],
)
def test_a_value_past_its_field_is_refused_naming_the_field(insn: Insn, field: str) -> None:
    with pytest.raises(VTAEncodingError, match=rf"field {field}=") as err:
        encode(insn, DEFAULT)
    assert "\n" not in str(err.value)


def test_micro_op_index_past_its_field_is_refused() -> None:
    with pytest.raises(VTAEncodingError, match="field wgt_idx=1024 does not fit its 10 bits"):
        encode_uop(Uop(0, 0, 1024), DEFAULT)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        (0x5, "opcode 5"),
        (0x7, "opcode 7"),
        (0x6 << 7, "6 is not a valid MemType"),
        (0x2 | 1 << 63, "padding bits"),
        (0x0 | 1 << 58, "padding bits"),
        (0x4 | 5 << 108 | 1 << 111, "5 is not a valid AluOp"),
    ],
)
def test_decode_refuses_words_no_instruction_has(word: int, message: str) -> None:
    with pytest.raises(VTAEncodingError, match=message):
        decode(word, DEFAULT)


# A non-default configuration whose micro-op still has 32 bits: 32×32 blocks, larger buffers.
WIDE = VTAConfig(log_block=5, log_inp_buff_size=16, log_wgt_buff_size=20, log_acc_buff_size=18)


def _instructions(config: VTAConfig) -> st.SearchStrategy[Insn]:
    def fill(cls: type, **fixed: object) -> st.SearchStrategy[Insn]:
        fmt = "MEM" if cls in (Load, Store) else cls.__name__.upper()
        lay = layouts(config)[fmt]
        draws: dict[str, st.SearchStrategy[object]] = {}
        for f in fields(cls):
            if f.name in fixed:
                continue
            width = lay[f.name][1]
            draws[f.name] = (
                st.booleans()
                if width == 1 and f.name not in ("imm",)
                else st.integers(-(1 << 15), (1 << 15) - 1)
                if f.name == "imm"
                else st.integers(0, (1 << width) - 1)
            )
        return st.builds(cls, **{k: st.just(v) for k, v in fixed.items()}, **draws)

    mem = st.sampled_from(list(MemType))
    return st.one_of(
        mem.flatmap(lambda m: fill(Load, memory_type=m)),
        mem.flatmap(lambda m: fill(Store, memory_type=m)),
        fill(Gemm),
        st.sampled_from(list(AluOp)).flatmap(lambda op: fill(Alu, alu_opcode=op)),
        fill(Finish),
    )


@pytest.mark.parametrize("config", [DEFAULT, WIDE], ids=["default", "32x32"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_field_round_trips(config: VTAConfig, data: st.DataObject) -> None:
    insn = data.draw(_instructions(config))
    assert decode(encode(insn, config), config) == insn


def test_field_widths_follow_the_configuration() -> None:
    assert (WIDE.depth("INP"), WIDE.depth("WGT"), WIDE.depth("ACC")) == (2048, 1024, 2048)
    assert layouts(WIDE)["GEMM"]["wgt_factor_in"][1] == 10
    small_uop = VTAConfig(log_uop_buff_size=13)  # 2048 micro-ops, as the Chisel design has
    assert layouts(small_uop)["GEMM"]["uop_bgn"] == (8, 11) and layouts(small_uop)["GEMM"]["uop_end"] == (
        19,
        12,
    )
    with pytest.raises(VTAEncodingError, match="uop_bgn=2048"):
        encode(Gemm(uop_bgn=2048), small_uop)


def test_default_configuration_and_presets() -> None:
    assert {m: DEFAULT.depth(m) for m in ("UOP", "INP", "WGT", "ACC", "OUT")} == {
        "UOP": 8192,
        "INP": 2048,
        "WGT": 1024,
        "ACC": 2048,
        "OUT": 2048,
    }
    assert [DEFAULT.element_bytes(m) for m in ("UOP", "INP", "WGT", "ACC", "OUT")] == [4, 16, 256, 64, 16]
    assert DEFAULT.bitstream_name == "1x16_i8w8a32_15_15_18_17"
    assert preset("pynq").peak_gops == pytest.approx(51.2)
    assert preset("ultra96").peak_gops == pytest.approx(170.5, abs=0.01)
    assert preset("zcu104").hw_version == "0.0.1" and set(PRESETS) == {"pynq", "ultra96", "zcu104"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"log_block": 7}, "log_block"),
        ({"log_inp_width": 4}, "log_inp_width"),
        ({"log_acc_buff_size": -1}, "log_acc_buff_size"),
        ({"log_wgt_buff_size": 17}, "must sum to 32"),
        ({"log_batch": True}, "log_batch"),
    ],
)
def test_a_bad_configuration_is_refused_in_one_line_naming_the_field(
    kwargs: dict[str, int], field: str
) -> None:
    with pytest.raises(VTAConfigError, match=field) as err:
        VTAConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_an_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(
        VTAConfigError, match="unknown VTA board preset 'pynq-z2': choose one of pynq, ultra96, zcu104"
    ):
        preset("pynq-z2")


def test_a_bad_board_preset_is_refused_naming_the_field() -> None:
    from dataclasses import replace

    with pytest.raises(VTAConfigError, match="board preset pynq: axi_bits=48"):
        replace(preset("pynq"), axi_bits=48)
    with pytest.raises(VTAConfigError, match="board preset pynq: clock_mhz=0"):
        replace(preset("pynq"), clock_mhz=0)
