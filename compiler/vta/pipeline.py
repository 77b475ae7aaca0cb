"""The four VTA modules and the dependency queues between them: how the fetch module routes instructions,
which queue each flag pops or pushes, and in what order the modules may run (docs/vta.md, "Tokens").

Both the functional simulator and the cycle model run a program through `run`; they differ only in
what one instruction does (`Step`): compute on data, or return its cycle cost. The token rules live here
once, so a program the simulator accepts is the program the cycle model times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgecam.compiler.vta.errors import VTADeadlockError, VTASimError
from edgecam.compiler.vta.isa import Insn, Load, MemType, Store

MODULES = ("load", "compute", "store")
# queue → what a token in it means (producer → consumer).
QUEUES = {
    "l2g": "load→compute: INP/WGT data loaded",
    "g2l": "compute→load: INP/WGT region read, may be overwritten",
    "g2s": "compute→store: OUT data ready",
    "s2g": "store→compute: OUT region stored, may be overwritten",
}
# module → flag → queue it pops from / pushes to; None: the flag must be 0 for that module.
_POPS: dict[str, dict[str, str | None]] = {
    "load": {"pop_prev_dep": None, "pop_next_dep": "g2l"},
    "compute": {"pop_prev_dep": "l2g", "pop_next_dep": "s2g"},
    "store": {"pop_prev_dep": "g2s", "pop_next_dep": None},
}
_PUSHES: dict[str, dict[str, str | None]] = {
    "load": {"push_prev_dep": None, "push_next_dep": "l2g"},
    "compute": {"push_prev_dep": "g2l", "push_next_dep": "g2s"},
    "store": {"push_prev_dep": "s2g", "push_next_dep": None},
}
# The HLS design's dependency FIFOs are 1024 deep: a push into a full one blocks its module. Its
# command queues (fetch → load, compute, store) are 512 deep: fetch blocks on a full one, and the
# instructions behind it in the stream reach no module until it drains.
TOKEN_CAPACITY = 1024
COMMAND_QUEUE_DEPTH = 512

# A module's vector clock: for each module (in MODULES order), how many of its instructions happened
# before this point, as far as the tokens popped so far tell. Instruction n of a module is its event n.
Clock = tuple[int, int, int]
# (module, index in the stream, instruction, start time, the module's clock at it) → end time.
Step = Callable[[str, int, Insn, float, Clock], float]
# A fetched instruction: index in the stream, the instruction, the queues it pops and pushes.
_Entry = tuple[int, Insn, list[str], list[str]]


def module_of(insn: Insn) -> str:
    """The module the fetch module routes `insn` to: STORE to store, LOAD of INP/WGT to load, everything
    else (LOAD of UOP/ACC, GEMM, ALU, FINISH) to compute."""
    if isinstance(insn, Store):
        return "store"
    if isinstance(insn, Load) and insn.memory_type in (MemType.INP, MemType.WGT):
        return "load"
    return "compute"


def describe(index: int, insn: Insn) -> str:
    """How errors name an instruction: its index in the stream and its kind."""
    kind = insn.OPCODE.name
    if isinstance(insn, Load | Store):
        kind += f" {insn.memory_type.name}"
    return f"instruction {index} ({kind})"


def _flags(insn: Insn, table: dict[str, str | None], module: str, index: int) -> list[str]:
    queues = []
    for flag, queue in table.items():
        if getattr(insn, flag):
            if queue is None:
                raise VTASimError(
                    f"{describe(index, insn)} on the {module} module sets {flag}, which must be 0 there"
                )
            queues.append(queue)
    return queues


@dataclass
class Timeline:
    """What a run through the modules gave: when FINISH completed, each module's busy time and the
    instructions it ran."""

    end: float = 0.0
    busy: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODULES, 0.0))
    executed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODULES, 0))


def run(program: Sequence[Insn], step: Step, choose: Callable[[list[str]], str] | None = None) -> Timeline:
    """Run `program` through the load, compute and store modules, each in order, an instruction starting
    once every queue it pops holds a token (at the earliest time one does). The fetch module hands
    instructions out in stream order and waits while the module's command queue is full. `choose`
    picks among modules ready at the same time (the simulator varies it to expose races). A module
    that waits forever is a deadlock, tokens left at the end are extra pushes: both raise
    VTADeadlockError."""
    decoded = []
    for index, insn in enumerate(program):
        module = module_of(insn)
        pops, pushes = (
            _flags(insn, _POPS[module], module, index),
            _flags(insn, _PUSHES[module], module, index),
        )
        decoded.append((module, (index, insn, pops, pushes)))
    pending: dict[str, deque[_Entry]] = {m: deque() for m in MODULES}
    # A token carries when it was pushed and the pusher's clock: the k-th pop of a FIFO is ordered
    # after its k-th push, and so after everything that push's module had seen.
    tokens: dict[str, deque[tuple[float, Clock]]] = {q: deque() for q in QUEUES}
    clocks: dict[str, Clock] = dict.fromkeys(MODULES, (0, 0, 0))
    free = dict.fromkeys(MODULES, 0.0)
    timeline, finished, fetched = Timeline(), None, 0
    while True:
        while fetched < len(decoded) and len(pending[decoded[fetched][0]]) < COMMAND_QUEUE_DEPTH:
            pending[decoded[fetched][0]].append(decoded[fetched][1])
            fetched += 1
        ready: dict[str, float] = {}
        for module in MODULES:
            if pending[module]:
                _, _, pops, pushes = pending[module][0]
                if all(tokens[q] for q in pops) and all(len(tokens[q]) < TOKEN_CAPACITY for q in pushes):
                    ready[module] = max([free[module], *(tokens[q][0][0] for q in pops)])
        if not ready:
            break
        start = min(ready.values())
        candidates = [m for m in MODULES if ready.get(m) == start]
        module = choose(candidates) if choose and len(candidates) > 1 else candidates[0]
        index, insn, pops, pushes = pending[module].popleft()
        if finished is not None:
            raise VTASimError(
                f"{describe(index, insn)} on the {module} module runs after FINISH ({describe(*finished)}), "
                "when the driver has already returned: end the stream with the token sequence in docs/vta.md"
            )
        seen = [clocks[module], *(tokens[q].popleft()[1] for q in pops)]
        own = MODULES.index(module)
        merged = [max(c[i] for c in seen) + (i == own) for i in range(len(MODULES))]
        clocks[module] = (merged[0], merged[1], merged[2])
        end = step(module, index, insn, start, clocks[module])
        free[module] = end
        timeline.busy[module] += end - start
        timeline.executed[module] += 1
        for q in pushes:
            tokens[q].append((end, clocks[module]))
        if insn.OPCODE.name == "FINISH":
            finished, timeline.end = (index, insn), end
    unfetched = decoded[fetched] if fetched < len(decoded) else None
    _check_end(pending, tokens, finished, unfetched)
    return timeline


def _route(queue: str) -> str:
    return QUEUES[queue].split(":")[0]


def _check_end(
    pending: dict[str, deque[_Entry]],
    tokens: dict[str, deque[tuple[float, Clock]]],
    finished: tuple[int, Insn] | None,
    unfetched: tuple[str, _Entry] | None,
) -> None:
    waits = []
    for module in MODULES:
        if pending[module]:
            index, insn, pops, pushes = pending[module][0]
            empty = [q for q in pops if not tokens[q]]
            why = (
                f"a token on {', '.join(f'{q} ({_route(q)})' for q in empty)}"
                if empty
                else "room in the full queue "
                + ", ".join(q for q in pushes if len(tokens[q]) >= TOKEN_CAPACITY)
            )
            waits.append(f"the {module} module waits at {describe(index, insn)} for {why}")
    if unfetched is not None:
        module, (index, insn, _, _) = unfetched
        waits.append(
            f"the fetch module waits at {describe(index, insn)} for room in the full {module} command queue "
            f"({COMMAND_QUEUE_DEPTH} instructions)"
        )
    if waits:
        hint = "a push is missing or a pop is extra"
        if unfetched is not None:
            hint += f", or the stream runs more than {COMMAND_QUEUE_DEPTH} instructions of one module ahead"
        raise VTADeadlockError(f"deadlock: {'; '.join(waits)}; {hint}")
    extra = [f"{q} ({_route(q)}) holds {len(tokens[q])}" for q in QUEUES if tokens[q]]
    if extra:
        raise VTADeadlockError(
            f"extra tokens at the end of the program: {', '.join(extra)}; a pop is missing or a push is extra"
        )
    if finished is None:
        raise VTADeadlockError("the program ended without FINISH: the driver would wait for it forever")
