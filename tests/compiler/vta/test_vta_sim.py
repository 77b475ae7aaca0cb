"""The VTA functional simulator running generated GEMM programs: bit-exact against numpy, token errors
reported as deadlocks naming the module and queue, out-of-range accesses naming the instruction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgecam.compiler.vta.config import VTAConfig
from edgecam.compiler.vta.errors import VTADeadlockError, VTAProgramError, VTASimError
from edgecam.compiler.vta.gemm_program import (
    GemmLayer,
    GemmProgram,
    Tiling,
    gemm_program,
    im2col,
    read_output,
    reference,
    tilings,
    write_operands,
)
from edgecam.compiler.vta.isa import Alu, AluOp, Finish, Gemm, Insn, Load, MemType, Store, Uop, encode_uops
from edgecam.compiler.vta.sim import Dram, Simulator

CONFIG = VTAConfig()


def _operands(layer: GemmLayer, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full int8 operands, or small ones when the shift is too small to bring full sums into int8."""
    rng = np.random.default_rng(seed)
    hi = 128 if layer.shift >= 6 else 4
    a = rng.integers(-hi, hi, (layer.m, layer.k), dtype=np.int8)
    b = rng.integers(-hi, hi, (layer.k, layer.n), dtype=np.int8)
    return a, b, rng.integers(-100 << layer.shift, 100 << layer.shift, layer.n, dtype=np.int32)


def _prepared(
    layer: GemmLayer, tiling: Tiling | None = None
) -> tuple[GemmProgram, Dram, tuple[np.ndarray, ...]]:
    dram = Dram(4 << 20)
    program = gemm_program(layer, CONFIG, dram, tiling)
    operands = _operands(layer)
    write_operands(program, CONFIG, dram, *operands)
    return program, dram, operands


def _run(program: GemmProgram, dram: Dram, insns: list[Insn] | None = None, seed: int = 0) -> Simulator:
    sim = Simulator(CONFIG, dram, seed=seed)
    sim.run_program(insns if insns is not None else program.insns)
    return sim


@pytest.mark.parametrize(
    ("layer", "tiling"),
    [
        (GemmLayer(8, 32, 48, shift=6), None),  # one tile
        (
            GemmLayer(40, 64, 32, shift=7, relu=True),
            Tiling(4, 1, 1),
        ),  # 80 tiles: both buffers wrap many times
        (GemmLayer(3, 16, 16, shift=0), None),  # no rounding step
        (GemmLayer(64, 128, 64, shift=9), Tiling(8, 2, 2)),
        (GemmLayer(49, 144, 64, shift=8, relu=True), None),  # a 7×7 map, 3×3 conv of 16 channels as a GEMM
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gemm_layer_is_bit_exact_against_numpy(layer: GemmLayer, tiling: Tiling | None, seed: int) -> None:
    """Under several interleavings of the modules (seed), the result equals the numpy int8 layer."""
    program, dram, operands = _prepared(layer, tiling)
    sim = _run(program, dram, seed=seed)
    out = read_output(program, CONFIG, dram)
    expected = reference(layer, *operands)
    assert np.array_equal(out, expected)
    assert len(np.unique(expected)) > 3  # not a saturated or constant result that any bug would match
    assert sim.counters.gemm_uops == layer.m * (layer.k // 16) * (layer.n // 16)


def test_convolution_as_gemm_matches_a_direct_convolution() -> None:
    """A 3×3, stride 1, pad 1 conv of an 8×8×16 int8 map to 32 channels: im2col + the VTA GEMM equals a
    convolution computed window by window."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (8, 8, 16), dtype=np.int8)
    w = rng.integers(-128, 128, (3, 3, 16, 32), dtype=np.int8)  # ky, kx, c_in, c_out
    bias = rng.integers(-3000, 3000, 32, dtype=np.int32)
    layer = GemmLayer(64, 144, 32, shift=9)
    dram = Dram(4 << 20)
    program = gemm_program(layer, CONFIG, dram)
    write_operands(program, CONFIG, dram, im2col(x, 3, pad=1), w.reshape(144, 32), bias)
    _run(program, dram)
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0))).astype(np.int32)
    direct = np.zeros((8, 8, 32), np.int32)
    for y in range(8):
        for xx in range(8):
            direct[y, xx] = np.einsum("hwc,hwco->o", padded[y : y + 3, xx : xx + 3], w.astype(np.int32))
    expected = np.clip((direct + bias + 256) >> 9, -127, 127).astype(np.int8).reshape(64, 32)
    assert np.array_equal(read_output(program, CONFIG, dram), expected)


def _index(insns: list[Insn], kind: type, **match: object) -> int:
    return next(
        i
        for i, x in enumerate(insns)
        if isinstance(x, kind) and all(getattr(x, k) == v for k, v in match.items())
    )


def test_a_dropped_token_is_a_deadlock_naming_module_and_queue() -> None:
    program, dram, _ = _prepared(GemmLayer(16, 32, 48, shift=6), Tiling(2, 1, 3))
    insns = list(program.insns)
    at = _index(insns, Load, memory_type=MemType.WGT)
    insns[at] = replace(insns[at], push_next_dep=False)  # the first WGT load no longer tells compute
    with pytest.raises(
        VTADeadlockError,
        match=r"deadlock: the compute module waits at instruction \d+ \([A-Z ]+\) "
        r"for a token on l2g \(load→compute\)",
    ) as err:
        _run(program, dram, insns)
    assert "\n" not in str(err.value)


def test_a_dropped_pop_is_a_race_naming_both_instructions() -> None:
    program, dram, _ = _prepared(GemmLayer(16, 32, 48, shift=6), Tiling(2, 1, 3))
    insns = list(program.insns)
    at = _index(insns, Gemm, reset_reg=False)
    insns[at] = replace(insns[at], pop_prev_dep=False)  # the first multiply no longer waits for its data
    load = _index(insns, Load, memory_type=MemType.INP)
    message = (
        rf"instruction {at} \(GEMM\): reads INP element 0, which instruction {load} on the load module "
        r"writes, with no token ordering the two: a race"
    )
    for seed in range(4):  # whichever module runs first
        with pytest.raises(VTASimError, match=message):
            _run(program, dram, insns, seed=seed)


def test_an_extra_push_leaves_a_token_at_the_end() -> None:
    program, dram, _ = _prepared(GemmLayer(16, 32, 48, shift=6), Tiling(2, 1, 3))
    insns = [*program.insns[:-1], Load(push_next_dep=True, memory_type=MemType.INP), program.insns[-1]]
    with pytest.raises(
        VTADeadlockError, match=r"extra tokens at the end of the program: l2g \(load→compute\) holds 1"
    ):
        _run(program, dram, insns)


def test_a_tile_past_the_buffer_is_refused_before_simulation() -> None:
    with pytest.raises(
        VTAProgramError, match=r"needs 4096 INP elements .* past the 2048 the INP buffer holds"
    ):
        gemm_program(GemmLayer(256, 128, 16, shift=4), CONFIG, Dram(4 << 20), Tiling(256, 8, 1))
    with pytest.raises(VTAProgramError, match="tiling tm=5 does not divide"):
        gemm_program(GemmLayer(16, 32, 48, shift=4), CONFIG, Dram(4 << 20), Tiling(5, 1, 1))
    with pytest.raises(VTAProgramError, match="pipeline hazard"):
        gemm_program(GemmLayer(2, 16, 16, shift=4), CONFIG, Dram(4 << 20))
    with pytest.raises(VTAProgramError, match="GEMM k=20: must be a positive multiple of 16"):
        gemm_program(GemmLayer(2, 20, 16, shift=4), CONFIG, Dram(4 << 20))


def test_an_sram_access_out_of_range_names_the_instruction() -> None:
    program, dram, _ = _prepared(GemmLayer(16, 32, 48, shift=6), Tiling(2, 1, 3))
    insns = list(program.insns)
    at = _index(insns, Load, memory_type=MemType.INP)
    insns[at] = replace(insns[at], sram_base=2047)
    with pytest.raises(
        VTASimError,
        match=rf"instruction {at} \(LOAD INP\): SRAM INP elements \[2047, 2049\) lie past its 2048",
    ):
        _run(program, dram, insns)
    insns = list(program.insns)
    at = _index(insns, Gemm, reset_reg=False)
    insns[at] = replace(insns[at], iter_in=2000)
    with pytest.raises(
        VTASimError, match=rf"instruction {at} \(GEMM\): dst index \d+ lies past the 2048 ACC elements"
    ):
        _run(program, dram, insns)


def _tiny(dram: Dram, body: list[Insn], uops: list[Uop]) -> list[Insn]:
    """`body` after a micro-op load, then FINISH: a compute-only program."""
    address = dram.alloc(4 * len(uops))
    dram.write(address, encode_uops(uops, CONFIG))
    load = Load(
        memory_type=MemType.UOP, dram_base=address // 4, y_size=1, x_size=len(uops), x_stride=len(uops)
    )
    return [load, *body, Finish()]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            [Gemm(uop_bgn=0, uop_end=1, iter_in=3)],
            "ACC index 0 is written by two GEMM steps less than 3 apart",
        ),
        (
            [Alu(uop_bgn=0, uop_end=1, alu_opcode=AluOp.MUL, use_imm=True, imm=2)],
            "ALU MUL is not implemented",
        ),
        (
            [Alu(uop_bgn=0, uop_end=1, alu_opcode=AluOp.SHR, use_imm=True, imm=-3)],
            "SHR by a negative 5-bit amount",
        ),
        ([Load(memory_type=MemType.ACC_8BIT, x_size=1, y_size=1)], "ACC_8BIT loads exist only"),
        ([Gemm(uop_bgn=0, uop_end=9000)], "SRAM UOP elements .* past its 8192"),
    ],
)
def test_what_the_hls_design_does_not_do_is_refused(body: list[Insn], message: str) -> None:
    dram = Dram(1 << 20)
    with pytest.raises(VTASimError, match=message):
        Simulator(CONFIG, dram).run_program(_tiny(dram, body, [Uop(0, 1, 0)]))


def test_padded_weight_load_and_bad_flags_are_refused() -> None:
    dram = Dram(1 << 20)
    wgt = Load(
        push_next_dep=True, memory_type=MemType.WGT, dram_base=16, y_size=1, x_size=1, x_stride=1, x_pad_0=1
    )
    with pytest.raises(VTASimError, match=r"instruction 0 \(LOAD WGT\): padding on a WGT load"):
        Simulator(CONFIG, dram).run_program([wgt, Finish(pop_prev_dep=True)])
    with pytest.raises(VTASimError, match="on the store module sets push_next_dep, which must be 0"):
        Simulator(CONFIG, dram).run_program([Store(push_next_dep=True), Finish()])


def test_alu_and_reset_follow_hls_semantics() -> None:
    """ALU ops wrap at 32 bits and write OUT's low byte; SHR is arithmetic; a reset GEMM zeroes ACC."""
    dram = Dram(1 << 20)
    k = np.arange(16)
    row = -(k << 8) + k  # negative values whose low 5 bits (the shift amount) are 0..15
    acc = np.array([[2**31 - 1] * 8 + [-(2**31)] * 8, row], np.int32).reshape(2, 1, 16)
    address = dram.alloc(acc.nbytes)
    dram.write(address, acc)
    sim = Simulator(CONFIG, dram)
    body: list[Insn] = [
        Load(memory_type=MemType.ACC, dram_base=address // 64, y_size=1, x_size=2, x_stride=2),
        Alu(uop_bgn=0, uop_end=1, alu_opcode=AluOp.ADD, use_imm=True, imm=1),  # ACC[0] += 1: wraps
        Alu(uop_bgn=1, uop_end=2, alu_opcode=AluOp.SHR, use_imm=False),  # ACC[1] >>= ACC[1] & 31
        Gemm(uop_bgn=2, uop_end=3, reset_reg=True),
    ]
    sim.run_program(_tiny(dram, body, [Uop(0, 0), Uop(1, 1), Uop(2, 0)]))
    assert np.array_equal(sim.acc[0, 0], np.r_[[-(2**31)] * 8, [-(2**31) + 1] * 8])
    assert np.array_equal(sim.acc[1, 0], row >> k)  # arithmetic: stays negative
    assert np.array_equal(sim.out[1, 0], (row >> k).astype(np.int8))
    assert not sim.acc[2].any()


def test_a_program_without_finish_or_with_work_after_it_is_refused() -> None:
    dram = Dram(1 << 20)
    with pytest.raises(VTADeadlockError, match="ended without FINISH"):
        Simulator(CONFIG, dram).run_program([Load(memory_type=MemType.UOP)])
    with pytest.raises(
        VTASimError, match=r"instruction 1 \(LOAD UOP\) on the compute module runs after FINISH"
    ):
        Simulator(CONFIG, dram).run_program([Finish(), Load(memory_type=MemType.UOP)])


def test_a_misplaced_token_is_a_race_whatever_the_interleaving() -> None:
    """Tokens that balance but guard the wrong instruction: the third INP load no longer waits for
    compute to finish reading that half (its pop moves to the WGT load after it). Some module orders
    would still give the right data; the race is reported under every one."""
    layer = GemmLayer(16, 32, 48, shift=8)
    for seed in range(8):
        program, dram, _ = _prepared(layer, Tiling(2, 1, 3))
        insns = list(program.insns)
        at = _index(insns, Load, memory_type=MemType.INP, pop_next_dep=True)
        insns[at] = replace(insns[at], pop_next_dep=False)
        assert isinstance(insns[at + 1], Load) and insns[at + 1].memory_type is MemType.WGT
        insns[at + 1] = replace(insns[at + 1], pop_next_dep=True)
        with pytest.raises(VTASimError, match=r"INP element .* with no token ordering the two: a race"):
            _run(program, dram, insns, seed=seed)


@pytest.mark.parametrize(("extra_loads", "deadlocks"), [(511, False), (512, True)])
def test_fetch_blocks_on_a_full_command_queue(extra_loads: int, deadlocks: bool) -> None:
    """The first load waits for a token from a compute instruction behind `extra_loads` more loads in
    the stream: with 512 loads ahead of it, the load command queue is full, fetch never delivers the
    compute instruction, and the hardware would hang."""
    program: list[Insn] = [
        Load(pop_next_dep=True, memory_type=MemType.INP),
        *[Load(memory_type=MemType.INP)] * (extra_loads - 1),
        Load(push_next_dep=True, memory_type=MemType.INP),
        Load(push_prev_dep=True, memory_type=MemType.UOP),  # compute no-op: tells load it may go
        Load(pop_prev_dep=True, memory_type=MemType.UOP),  # ... and waits for the last load
        Finish(),
    ]
    sim = Simulator(CONFIG, Dram(1 << 20))
    if not deadlocks:
        assert sim.run_program(program).executed == {"load": 1 + extra_loads, "compute": 3, "store": 0}
        return
    with pytest.raises(
        VTADeadlockError,
        match=r"the fetch module waits at instruction 512 \(LOAD INP\) for room in the full load command",
    ):
        sim.run_program(program)


def test_storing_out_written_by_a_reset_gemm_is_refused() -> None:
    dram = Dram(1 << 20)
    out = dram.alloc(16)
    body: list[Insn] = [
        Gemm(uop_bgn=0, uop_end=1, reset_reg=True, push_next_dep=True),
        Store(pop_prev_dep=True, push_prev_dep=True, dram_base=out // 16, y_size=1, x_size=1, x_stride=1),
        Load(pop_next_dep=True, memory_type=MemType.UOP),
    ]
    with pytest.raises(
        VTASimError, match=r"instruction 2 \(STORE OUT\): OUT element 0 was last written by a reset"
    ):
        Simulator(CONFIG, dram).run_program(_tiny(dram, body, [Uop(0, 0)]))


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(3, 40),
    kb=st.integers(1, 5),
    nb=st.integers(1, 4),
    shift=st.integers(0, 15),
    relu=st.booleans(),
    pick=st.integers(0, 1000),
    seed=st.integers(0, 3),
)
def test_any_small_layer_and_any_tiling_that_fits_is_bit_exact(
    m: int, kb: int, nb: int, shift: int, relu: bool, pick: int, seed: int
) -> None:
    layer = GemmLayer(m, 16 * kb, 16 * nb, shift=shift, relu=relu)
    fitting = tilings(layer, CONFIG)
    assume(fitting)  # a 1-row, 1-block layer has no tiling free of the pipeline hazard
    program, dram, operands = _prepared(layer, fitting[pick % len(fitting)][1])
    _run(program, dram, seed=seed)
    assert np.array_equal(read_output(program, CONFIG, dram), reference(layer, *operands))
