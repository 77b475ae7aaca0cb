"""The memory budget for requests in flight: bytes reserved before a request is received or decoded.

A 64 MiB ModelInfer request is several 64 MiB buffers by the time a model runs on it: gRPC's
receive buffer and the bytes it hands over, the parsed protobuf, the decoded input arrays (raw
contents are copied out of the message) and the runtime's own copy of the inputs. Sixteen of them
at once took a camera from 147 MB to 2.7 GB. gRPC reads a unary request as soon as the call
starts, whatever its size, so ModelInfer is served as a client-streaming call (the same bytes on
the wire): its handler reserves room for a message of max_message_bytes (receive buffer + bytes)
*before* it reads one, then trims the reservation to what the request holds once its size is
known: 2 × its wire size (bytes + message) and 2 × its decoded inputs (arrays + runtime copy).
The reservation is trimmed as soon as the message is read, so a small request holds the
largest-size reservation only while gRPC hands its bytes over: concurrent small requests queue for
microseconds, not behind one another's inference. A call that does not fit waits for room up to
request_memory_wait_seconds (requests in flight finish and give theirs back), then is refused with
RESOURCE_EXHAUSTED, unread, so the camera's inference thread keeps the CPU and the memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.server.errors import ResourceExhausted
from edgecam.server.metrics import EdgecamMetrics

_MIB = 1024 * 1024
# Decoded arrays, the runtime's copy of them, and its working memory: measured on a 64 MiB request
# to a one-op model, RSS grew 320 MiB with 4 × 64 reserved; 5 × keeps the peak within the budget.
DECODED_FACTOR = 3
# Bytes per element as decoded from each typed-contents field: the widest datatype it carries.
_TYPED_ITEMSIZE = {
    "bool_contents": 1,
    "int_contents": 4,
    "int64_contents": 8,
    "uint_contents": 4,
    "uint64_contents": 8,
    "fp32_contents": 4,
    "fp64_contents": 8,
}


# How often a call waiting for room looks again: room comes back from executor threads, which cannot
# wake an asyncio waiter cheaply; a few milliseconds is well under a request's own time.
_WAIT_STEP_S = 0.002


class MemoryBudget:
    """A byte semaphore: `reserve` fits now or raises ResourceExhausted; `reserve_within` waits."""

    def __init__(self, capacity: int, metrics: EdgecamMetrics) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()
        self._metrics = metrics
        metrics.request_memory_budget.set(capacity)

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, nbytes: int, what: str) -> Reservation:
        reservation = Reservation(self, what)
        reservation.grow(nbytes)
        return reservation

    async def reserve_within(self, nbytes: int, what: str, wait_s: float) -> Reservation:
        """`reserve`, waiting up to `wait_s` for requests in flight to give room back (never waits
        for more than the whole budget: that can never fit)."""
        deadline = time.monotonic() + wait_s
        while nbytes <= self.capacity and time.monotonic() < deadline and not self._fits(nbytes):
            await asyncio.sleep(_WAIT_STEP_S)
        return self.reserve(nbytes, what)

    def _fits(self, nbytes: int) -> bool:
        with self._lock:
            return nbytes <= self.capacity - self._used

    def _take(self, nbytes: int, what: str) -> None:
        with self._lock:
            free = self.capacity - self._used
            if nbytes <= free:
                self._used += nbytes
                self._metrics.request_memory.set(self._used)
                return
        self._metrics.requests_refused.labels(reason="memory_budget").inc()
        if nbytes > self.capacity:
            raise ResourceExhausted(
                f"{what} needs {nbytes / _MIB:.1f} MiB in memory, more than the whole request memory budget "
                f"({self.capacity / _MIB:.0f} MiB, request_memory_budget_bytes); send smaller requests"
            )
        raise ResourceExhausted(
            f"{what} needs {nbytes / _MIB:.1f} MiB in memory; {free / _MIB:.1f} MiB of the "
            f"{self.capacity / _MIB:.0f} MiB request memory budget are free (request_memory_budget_bytes); "
            "retry later"
        )

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            self._metrics.request_memory.set(self._used)


class Reservation:
    """What one request holds of the budget; released on exit (or `release()`), exactly once."""

    def __init__(self, budget: MemoryBudget, what: str) -> None:
        self._budget = budget
        self._what = what
        self.nbytes = 0

    def grow(self, nbytes: int) -> None:
        """Reserve `nbytes` more; raises ResourceExhausted (keeping what is held) if they do not fit."""
        if nbytes > 0:
            self._budget._take(nbytes, self._what)
            self.nbytes += nbytes

    def resize(self, nbytes: int) -> None:
        """Hold exactly `nbytes`: give back the excess, or reserve more (ResourceExhausted if no room)."""
        if nbytes > self.nbytes:
            self.grow(nbytes - self.nbytes)
        elif nbytes < self.nbytes:
            self._budget._give(self.nbytes - nbytes)
            self.nbytes = nbytes

    def release(self) -> None:
        held, self.nbytes = self.nbytes, 0
        if held:
            self._budget._give(held)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def receive_cost(max_message_bytes: int) -> int:
    """What a request may cost before its size is known: that of a raw request of the largest size.

    Reserved before reading, so every request the budget lets in can also be decoded and run: no
    request is refused after it has been read (and its buffers already made RSS grow).
    """
    return wire_cost(max_message_bytes) + DECODED_FACTOR * max_message_bytes


def wire_cost(nbytes: int) -> int:
    """What a serialized request holds before its inputs are decoded: its bytes and the parsed message."""
    return 2 * nbytes


def decoded_cost(
    request: oip.ModelInferRequest, raw_contents: Sequence[bytes | memoryview] | None = None
) -> int:
    """What decoding `request`'s inputs allocates, the runtime's copy of them and its working memory
    on inputs that size (a model's intermediate tensors scale with its inputs): 3 × the arrays.

    Counted from the contents actually sent (raw bytes, or typed values × their width), never from
    the declared shapes: a shape may claim anything, the decoder allocates what was sent and then
    checks it against the shape.
    """
    raw = request.raw_input_contents if raw_contents is None else raw_contents
    decoded = sum(len(contents) for contents in raw)
    for tensor in request.inputs:
        contents = tensor.contents
        decoded += sum(len(getattr(contents, field)) * width for field, width in _TYPED_ITEMSIZE.items())
        decoded += sum(len(value) for value in contents.bytes_contents)
    return DECODED_FACTOR * decoded
