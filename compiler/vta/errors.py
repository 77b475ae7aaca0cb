"""VTA errors: each message names the field, instruction or queue at fault and what to do instead."""

from __future__ import annotations

from edgecam.compiler.errors import CompilerError, InvalidOptionError


class VTAConfigError(InvalidOptionError):
    """A hardware configuration or board preset with a value the VTA design cannot take."""


class VTAEncodingError(CompilerError):
    """An instruction or micro-op field whose value does not fit its bits, or bytes that decode to no
    valid instruction."""


class VTAProgramError(CompilerError):
    """A layer the program generator cannot tile for this configuration (a tile past a buffer, a shape
    that is not a multiple of the block)."""


class VTASimError(CompilerError):
    """The simulator refused an instruction: an SRAM or DRAM access out of range, a field the HLS design
    does not implement (MUL, WGT padding, a negative shift)."""


class VTADeadlockError(VTASimError):
    """The modules wait on dependency tokens that never come (a missing push or an extra pop), or the
    program ends with tokens nobody popped (an extra push)."""
