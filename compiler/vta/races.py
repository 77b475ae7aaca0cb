"""Data races between VTA's modules, found whatever order they happen to run in (docs/vta.md,
"Simulator").

Two SRAMs are shared: INP and WGT (written by load, read by compute) and OUT (written by compute, read
by store). A read is safe only if the write it reads is ordered before it by tokens, and a write only if
the reads of the old value are: a token's pop is ordered after its push, and after everything that
happened before the push. pipeline.run keeps that order as a vector clock per module; here every shared
element remembers the clock value of its last write and last read, and an access that the tokens do not
order after the other module's last access to it is a race, even when this run's interleaving happened
to give the right data.
"""

from __future__ import annotations

import numpy as np

from edgecam.compiler.vta.config import VTAConfig
from edgecam.compiler.vta.errors import VTASimError
from edgecam.compiler.vta.pipeline import MODULES, Clock

# buffer → (the module that writes it, the module that reads it)
SHARED = {"INP": ("load", "compute"), "WGT": ("load", "compute"), "OUT": ("compute", "store")}


class RaceChecker:
    def __init__(self, config: VTAConfig) -> None:
        # Per element: the writer's / reader's event number of its last write / read (0: none yet), and
        # the stream index of that instruction, to name it.
        self._events = {(b, kind): np.zeros(config.depth(b), np.int64) for b in SHARED for kind in ("w", "r")}
        self._insns = {
            (b, kind): np.full(config.depth(b), -1, np.int64) for b in SHARED for kind in ("w", "r")
        }
        self._clock: Clock = (0, 0, 0)
        self._index = -1

    def at(self, index: int, clock: Clock) -> None:
        """The instruction about to access the SRAMs: its stream index and its module's clock."""
        self._index, self._clock = index, clock

    def write(self, buffer: str, elements: np.ndarray, where: str) -> None:
        writer, reader = SHARED[buffer]
        self._check(buffer, elements, "r", reader, where, "overwrites", "reads")
        self._events[buffer, "w"][elements] = self._clock[MODULES.index(writer)]
        self._insns[buffer, "w"][elements] = self._index

    def read(self, buffer: str, elements: np.ndarray, where: str) -> None:
        writer, reader = SHARED[buffer]
        self._check(buffer, elements, "w", writer, where, "reads", "writes")
        self._events[buffer, "r"][elements] = self._clock[MODULES.index(reader)]
        self._insns[buffer, "r"][elements] = self._index

    def _check(
        self, buffer: str, elements: np.ndarray, kind: str, other: str, where: str, verb: str, did: str
    ) -> None:
        """Refuse the access if the other module's last access to one of `elements` is not ordered
        before it: its event number is past what this module's clock has seen of that module."""
        if not elements.size:
            return
        late = self._events[buffer, kind][elements] > self._clock[MODULES.index(other)]
        if late.any():
            element = int(elements[int(np.argmax(late))])
            raise VTASimError(
                f"{where}: {verb} {buffer} element {element}, which instruction "
                f"{int(self._insns[buffer, kind][element])} on the {other} module {did}, with no token "
                "ordering the two: a race (a token is missing or guards the wrong instruction)"
            )
