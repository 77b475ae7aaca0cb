"""The VTA cycle model: how many fabric cycles a program takes on a board preset (docs/vta.md, "Cycle
model"). It reads only the instruction stream, never data:

- GEMM: one micro-op step (a BATCH×BLOCK by BLOCK×BLOCK product) per cycle, as the HLS loop runs at II 1;
  ALU: one step per two cycles (II 2: the register file has one read port); plus a pipeline fill per
  instruction.
- LOAD/STORE: every row is one DRAM burst, costing the preset's latency and one bus beat per bus width of
  data; all modules share one DRAM port, so beats of concurrent transfers queue behind each other. Padding
  is written into SRAM at one element per cycle.
- The load, compute and store modules overlap as far as the dependency tokens let them (pipeline.run).

Its counts (micro-op steps, bytes moved) come from the instruction fields; the simulator counts the same
things while executing, and the tests check that the two agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgecam.compiler.vta import pipeline
from edgecam.compiler.vta.config import BoardPreset
from edgecam.compiler.vta.isa import Alu, Gemm, Insn, Load, Store

GEMM_CYCLES_PER_STEP = 1
ALU_CYCLES_PER_STEP = 2
# Cycles before a GEMM/ALU instruction's first result and per instruction dispatch: VTA publishes no
# figure; a handful of cycles is what an HLS loop of this depth takes to fill. An assumption.
PIPELINE_FILL_CYCLES = 4


@dataclass
class CycleReport:
    """What the model says a program costs on `preset`: cycles to FINISH, busy cycles per module and of
    the DRAM port, and the work counted from the instructions."""

    preset: BoardPreset
    cycles: int = 0
    busy: dict[str, float] = field(default_factory=dict)
    dram_busy: int = 0
    gemm_uops: int = 0
    gemm_reset_uops: int = 0
    alu_uops: int = 0
    load_bytes: Counter[str] = field(default_factory=Counter)
    store_bytes: Counter[str] = field(default_factory=Counter)

    @property
    def seconds(self) -> float:
        return self.cycles / (self.preset.clock_mhz * 1e6)

    @property
    def ops(self) -> int:
        """Multiply-adds of the GEMM steps, counted as two operations each."""
        return self.gemm_uops * self.preset.config.ops_per_cycle

    @property
    def gops(self) -> float:
        return self.ops / self.seconds / 1e9 if self.cycles else 0.0

    @property
    def utilization(self) -> float:
        """Fraction of the GEMM core's peak: GEMM steps per cycle."""
        return self.gemm_uops / self.cycles if self.cycles else 0.0


class _Timer:
    def __init__(self, preset: BoardPreset) -> None:
        self.preset, self.port_free = preset, 0
        self.report = CycleReport(preset)

    def step(self, module: str, index: int, insn: Insn, start: float, clock: pipeline.Clock) -> float:
        if isinstance(insn, Load | Store):
            return self._memory(insn, int(start))
        if isinstance(insn, Gemm | Alu):
            steps = (
                (insn.uop_end - insn.uop_bgn) * insn.iter_out * insn.iter_in
                if insn.uop_end > insn.uop_bgn
                else 0
            )
            if isinstance(insn, Alu):
                self.report.alu_uops += steps
                return start + PIPELINE_FILL_CYCLES + steps * ALU_CYCLES_PER_STEP
            if insn.reset_reg:
                self.report.gemm_reset_uops += steps
            else:
                self.report.gemm_uops += steps
            return start + PIPELINE_FILL_CYCLES + steps * GEMM_CYCLES_PER_STEP
        return start + 1  # FINISH

    def _memory(self, insn: Load | Store, start: int) -> int:
        if insn.x_size == 0:
            return start + 1  # a NOP: only tokens move
        kind = insn.memory_type.name
        size = self.preset.config.element_bytes(kind)
        data = insn.y_size * insn.x_size * size
        (self.report.store_bytes if isinstance(insn, Store) else self.report.load_bytes)[kind] += data
        bus = self.preset.dram_bytes_per_cycle
        beats = insn.y_size * -(-insn.x_size * size // bus)
        pads = (insn.y_pad_0 + insn.y_size + insn.y_pad_1) * (insn.x_pad_0 + insn.x_size + insn.x_pad_1)
        pads -= insn.y_size * insn.x_size
        end = max(start + insn.y_size * self.preset.dram_latency_cycles + beats, self.port_free + beats)
        self.report.dram_busy += beats
        self.port_free = end
        return end + pads


def estimate(program: Sequence[Insn], preset: BoardPreset) -> CycleReport:
    """The cycle model's account of `program` on `preset` (a deadlocking program raises as it would in
    the simulator)."""
    timer = _Timer(preset)
    timeline = pipeline.run(program, timer.step)
    timer.report.cycles = int(timeline.end)
    timer.report.busy = dict(timeline.busy)
    return timer.report
