"""The VTA cycle model: its counts equal the simulator's, its cycles follow the documented rules and stay
between the compute/bandwidth bounds and the fully serial time."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgecam.compiler.vta.config import VTAConfig, preset
from edgecam.compiler.vta.cycles import PIPELINE_FILL_CYCLES, estimate
from edgecam.compiler.vta.errors import VTADeadlockError
from edgecam.compiler.vta.gemm_program import GemmLayer, Tiling, gemm_program, write_operands
from edgecam.compiler.vta.isa import Alu, Finish, Gemm, Load, MemType
from edgecam.compiler.vta.sim import Dram, Simulator

CONFIG = VTAConfig()
PYNQ = preset("pynq")

LAYERS = [
    (GemmLayer(8, 32, 48, shift=6), None),
    (GemmLayer(40, 64, 32, shift=7, relu=True), Tiling(4, 1, 1)),
    (GemmLayer(64, 128, 64, shift=9), Tiling(8, 2, 2)),
    (GemmLayer(196, 576, 64, shift=9), None),  # a 14×14 map, 3×3 conv of 64 channels as a GEMM
]


@pytest.mark.parametrize(("layer", "tiling"), LAYERS)
def test_model_counts_equal_the_simulators_and_the_layers_arithmetic(
    layer: GemmLayer, tiling: Tiling | None
) -> None:
    dram = Dram(8 << 20)
    program = gemm_program(layer, CONFIG, dram, tiling)
    rng = np.random.default_rng(0)
    write_operands(
        program,
        CONFIG,
        dram,
        rng.integers(-128, 128, (layer.m, layer.k), dtype=np.int8),
        rng.integers(-128, 128, (layer.k, layer.n), dtype=np.int8),
        rng.integers(-999, 999, layer.n, dtype=np.int32),
    )
    sim = Simulator(CONFIG, dram)
    sim.run_program(program.insns)
    model = estimate(program.insns, PYNQ)
    counted = sim.counters
    assert (model.gemm_uops, model.gemm_reset_uops, model.alu_uops) == (
        counted.gemm_uops,
        counted.gemm_reset_uops,
        counted.alu_uops,
    )
    assert model.load_bytes == counted.load_bytes and model.store_bytes == counted.store_bytes
    # ... and both equal what the layer and its tiling imply.
    t, mb, kb, nb = program.tiling, layer.m, layer.k // 16, layer.n // 16
    assert model.gemm_uops == mb * kb * nb
    assert model.load_bytes["INP"] == mb * kb * 16 * (nb // t.tn)
    assert model.load_bytes["WGT"] == nb * kb * 256 * (mb // t.tm)
    assert model.store_bytes["OUT"] == layer.m * layer.n
    assert model.ops == layer.ops


@pytest.mark.parametrize(("layer", "tiling"), LAYERS)
def test_cycles_lie_between_the_bounds_and_the_modules_overlap(
    layer: GemmLayer, tiling: Tiling | None
) -> None:
    program = gemm_program(layer, CONFIG, Dram(8 << 20), tiling)
    model = estimate(program.insns, PYNQ)
    serial = sum(model.busy.values())
    assert model.cycles >= max(model.gemm_uops, model.dram_busy)
    assert model.cycles <= serial
    if len(program.insns) > 40:  # several tiles: loads of one step overlap the GEMMs of another
        assert model.cycles < 0.95 * serial
    assert model.utilization == pytest.approx(model.gemm_uops / model.cycles)
    assert model.gops == pytest.approx(model.utilization * PYNQ.peak_gops)


def test_a_small_program_costs_what_docs_vta_md_says() -> None:
    """LOAD of 4 INP elements (64 B, one row) on PYNQ: 32 cycles latency + 8 beats of 8 B; a GEMM of 3
    steps: fill + 3; FINISH: 1; ALU of 2 steps: fill + 2×2."""
    program = [
        Load(push_next_dep=True, memory_type=MemType.INP, dram_base=64, y_size=1, x_size=4, x_stride=4),
        Gemm(pop_prev_dep=True, uop_bgn=0, uop_end=1, iter_in=3, dst_factor_in=1, src_factor_in=1),
        Alu(uop_bgn=0, uop_end=1, iter_in=2, dst_factor_in=1, use_imm=True, imm=1),
        Finish(),
    ]
    model = estimate(program, PYNQ)
    load = 32 + 64 // 8
    assert model.busy["load"] == load
    assert model.cycles == load + (PIPELINE_FILL_CYCLES + 3) + (PIPELINE_FILL_CYCLES + 4) + 1
    ultra = estimate(program, preset("ultra96"))  # 16 B beats, 64-cycle latency
    assert ultra.busy["load"] == 64 + 64 // 16


def test_a_faster_board_takes_no_more_time() -> None:
    program = gemm_program(GemmLayer(196, 576, 64, shift=9), CONFIG, Dram(8 << 20)).insns
    assert estimate(program, preset("ultra96")).seconds < estimate(program, PYNQ).seconds


def test_the_model_reports_a_deadlock_as_the_simulator_does() -> None:
    program = list(gemm_program(GemmLayer(16, 32, 48, shift=6), CONFIG, Dram(8 << 20), Tiling(2, 1, 3)).insns)
    at = next(i for i, insn in enumerate(program) if isinstance(insn, Gemm) and insn.pop_prev_dep)
    program[at] = replace(program[at], pop_prev_dep=False)
    with pytest.raises(VTADeadlockError, match="extra tokens at the end of the program: l2g"):
        estimate(program, PYNQ)


def test_the_example_in_docs_vta_md_runs() -> None:
    """docs/vta.md's usage example is code users copy: it must keep working."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "vta.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    exec(compile(code, "docs/vta.md", "exec"), {})
