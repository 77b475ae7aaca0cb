"""The VTA hardware configuration and the board presets (docs/vta.md, "Configuration").

A configuration is the handful of log2 parameters a VTA bitstream is built from; everything else
(element sizes, buffer depths, the widths of the instruction fields that index the buffers) is derived
from them, so the encoder, the simulator and the cycle model all read one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property

from edgecam.compiler.vta.errors import VTAConfigError

# Fixed by the ISA, whatever the configuration: 128-bit instructions, 32-bit micro-ops.
INSN_BYTES = 16
UOP_BITS = 32


@dataclass(frozen=True)
class VTAConfig:
    """The architectural parameters of a VTA core (all log2). The defaults are the only configuration
    any published bitstream uses: a 1×16×16 int8 GEMM core with int32 accumulators, 32 KiB micro-op,
    32 KiB input, 256 KiB weight and 128 KiB accumulator buffers."""

    log_inp_width: int = 3
    log_wgt_width: int = 3
    log_acc_width: int = 5
    log_batch: int = 0
    log_block: int = 4
    log_uop_buff_size: int = 15
    log_inp_buff_size: int = 15
    log_wgt_buff_size: int = 18
    log_acc_buff_size: int = 17

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise VTAConfigError(f"VTA config {f.name}={value!r}: expected a non-negative integer (log2)")
        # The simulator computes in numpy int8 × int8 → int32, as every shipped configuration does.
        for name, want in (("log_inp_width", 3), ("log_wgt_width", 3), ("log_acc_width", 5)):
            if getattr(self, name) != want:
                raise VTAConfigError(
                    f"VTA config {name}={getattr(self, name)}: edgecam supports int8 inputs and weights and "
                    f"int32 accumulators only ({name}={want})"
                )
        if not 1 <= self.log_block <= 6:
            raise VTAConfigError(f"VTA config log_block={self.log_block}: expected 1..6 (blocks of 2 to 64)")
        if self.log_batch > 4:
            raise VTAConfigError(f"VTA config log_batch={self.log_batch}: expected 0..4")
        for name in ("uop", "inp", "wgt", "acc"):
            if getattr(self, f"log_{name}_depth") < 1:
                raise VTAConfigError(
                    f"VTA config log_{name}_buff_size={getattr(self, f'log_{name}_buff_size')}: the "
                    f"{name.upper()} "
                    f"buffer holds less than two elements of {self.element_bytes(name.upper())} B; make it "
                    "larger"
                )
        # The micro-op struct must be exactly 32 bits (the runtime static_asserts it).
        uop_bits = self.log_acc_depth + max(self.log_acc_depth, self.log_inp_depth) + self.log_wgt_depth
        if uop_bits != UOP_BITS:
            raise VTAConfigError(
                f"VTA config buffer sizes give micro-op fields of {uop_bits} bits (dst {self.log_acc_depth} "
                "+ src "
                f"{max(self.log_acc_depth, self.log_inp_depth)} + wgt {self.log_wgt_depth}); they must sum "
                "to 32: "
                "change log_acc_buff_size, log_inp_buff_size or log_wgt_buff_size"
            )

    @property
    def batch(self) -> int:
        return 1 << self.log_batch

    @property
    def block(self) -> int:
        """BLOCK_IN = BLOCK_OUT: the GEMM core multiplies a batch×block by a block×block matrix per cycle."""
        return 1 << self.log_block

    def element_bytes(self, memory: str) -> int:
        """Bytes of one element of a buffer (UOP, INP, WGT, ACC, OUT): the unit of every SRAM index and of
        a LOAD/STORE's dram_base."""
        bits = {
            "UOP": UOP_BITS,
            "INP": (8 << (self.log_inp_width - 3)) * self.batch * self.block,
            "WGT": (8 << (self.log_wgt_width - 3)) * self.block * self.block,
            "ACC": (8 << (self.log_acc_width - 3)) * self.batch * self.block,
            "OUT": (8 << (self.log_inp_width - 3)) * self.batch * self.block,
        }
        return bits[memory] // 8

    @property
    def log_uop_depth(self) -> int:
        return self.log_uop_buff_size - 2

    @property
    def log_inp_depth(self) -> int:
        return self.log_inp_buff_size - self.log_batch - self.log_block - self.log_inp_width + 3

    @property
    def log_wgt_depth(self) -> int:
        return self.log_wgt_buff_size - 2 * self.log_block - self.log_wgt_width + 3

    @property
    def log_acc_depth(self) -> int:
        """The OUT buffer has the same depth (it holds the accumulators' low bytes)."""
        return self.log_acc_buff_size - self.log_batch - self.log_block - self.log_acc_width + 3

    def depth(self, memory: str) -> int:
        """Elements in a buffer: UOP, INP, WGT, ACC or OUT."""
        log = {
            "UOP": self.log_uop_depth,
            "INP": self.log_inp_depth,
            "WGT": self.log_wgt_depth,
            "ACC": self.log_acc_depth,
            "OUT": self.log_acc_depth,
        }
        return 1 << log[memory]

    @property
    def ops_per_cycle(self) -> int:
        """Multiply and add counted as two operations: the peak of the GEMM core per cycle."""
        return 2 * self.batch * self.block * self.block

    @cached_property
    def bitstream_name(self) -> str:
        """The name VTA's bitstreams are published under, e.g. 1x16_i8w8a32_15_15_18_17."""
        return (
            f"{self.batch}x{self.block}_i{8 << (self.log_inp_width - 3)}w{8 << (self.log_wgt_width - 3)}"
            f"a{8 << (self.log_acc_width - 3)}_{self.log_uop_buff_size}_{self.log_inp_buff_size}"
            f"_{self.log_wgt_buff_size}_{self.log_acc_buff_size}"
        )


@dataclass(frozen=True)
class BoardPreset:
    """A board VTA runs on: FPGA part and clock, the AXI port the core reaches DRAM through, the HLS
    register bases, and the two DRAM figures the cycle model needs. The part, clock, bus width and
    bases are VTA's own build settings; `dram_latency_cycles` is an assumption of edgecam's cycle
    model (VTA publishes none), documented in docs/vta.md."""

    name: str
    board: str
    part: str
    clock_mhz: float
    axi_bits: int
    # fetch, load, compute, store: the four HLS modules' AXI-Lite register bases.
    register_bases: tuple[int, int, int, int]
    dram_latency_cycles: int
    hw_version: str
    config: VTAConfig = field(default_factory=VTAConfig)

    def __post_init__(self) -> None:
        if self.clock_mhz <= 0:
            raise VTAConfigError(f"board preset {self.name}: clock_mhz={self.clock_mhz} must be > 0")
        if self.axi_bits not in (32, 64, 128, 256, 512):
            raise VTAConfigError(
                f"board preset {self.name}: axi_bits={self.axi_bits}: expected 32, 64, 128, 256 or 512"
            )
        if self.dram_latency_cycles < 0:
            raise VTAConfigError(
                f"board preset {self.name}: dram_latency_cycles={self.dram_latency_cycles} must be >= 0"
            )

    @property
    def dram_bytes_per_cycle(self) -> int:
        """One AXI beat per fabric cycle: the bus width in bytes."""
        return self.axi_bits // 8

    @property
    def peak_gops(self) -> float:
        return self.config.ops_per_cycle * self.clock_mhz / 1000.0


# Zynq-7000 boards reach DRAM through the 64-bit ACP port, Zynq UltraScale+ through the 128-bit HPC0 port.
_ZYNQ7_BASES = (0x43C00000, 0x43C01000, 0x43C02000, 0x43C03000)
_ZYNQMP_BASES = (0xA0000000, 0xA0001000, 0xA0002000, 0xA0003000)
PRESETS: dict[str, BoardPreset] = {
    "pynq": BoardPreset("pynq", "PYNQ-Z1", "xc7z020clg484-1", 100.0, 64, _ZYNQ7_BASES, 32, "0.0.2"),
    "ultra96": BoardPreset(
        "ultra96", "Ultra96", "xczu3eg-sbva484-1-e", 333.0, 128, _ZYNQMP_BASES, 64, "0.0.2"
    ),
    "zcu104": BoardPreset("zcu104", "ZCU104", "xczu7ev-ffvc1156-2-e", 333.0, 128, _ZYNQMP_BASES, 64, "0.0.1"),
}


def preset(name: str) -> BoardPreset:
    """The board preset called `name`; an unknown name is refused with the valid ones listed."""
    try:
        return PRESETS[name]
    except KeyError:
        raise VTAConfigError(
            f"unknown VTA board preset {name!r}: choose one of {', '.join(sorted(PRESETS))}"
        ) from None
