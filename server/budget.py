"""The memory budget for requests in flight: bytes reserved before a request is parsed or decoded.

A 64 MiB ModelInfer request is several 64 MiB buffers by the time a model runs on it: the bytes
gRPC hands over (the server registers ModelInfer without a deserializer to get them first), the
parsed protobuf, the decoded input arrays (raw contents are copied out of the message) and the
runtime's own copy of the inputs. Sixteen of them at once took a camera from 147 MB to 2.7 GB.
So each request reserves what it will hold before it holds it, in two steps: 2 × its wire size
before parsing (bytes + message), then 2 × its decoded inputs once their sizes are known (arrays +
runtime copy). A request that does not fit in what is left is refused with RESOURCE_EXHAUSTED at
once, so its bytes are freed and the camera's inference thread keeps the CPU and the memory.
"""

from __future__ import annotations

import threading
from types import TracebackType

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.server.errors import ResourceExhausted
from edgecam.server.metrics import EdgecamMetrics

_MIB = 1024 * 1024
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


class MemoryBudget:
    """A byte semaphore that never waits: `reserve` fits now or raises ResourceExhausted."""

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


def wire_cost(nbytes: int) -> int:
    """What a serialized request holds before its inputs are decoded: its bytes and the parsed message."""
    return 2 * nbytes


def decoded_cost(request: oip.ModelInferRequest) -> int:
    """What decoding `request`'s inputs allocates, and the runtime's copy of them: 2 × the arrays.

    Counted from the contents actually sent (raw bytes, or typed values × their width), never from
    the declared shapes: a shape may claim anything, the decoder allocates what was sent and then
    checks it against the shape.
    """
    decoded = sum(len(raw) for raw in request.raw_input_contents)
    for tensor in request.inputs:
        contents = tensor.contents
        decoded += sum(len(getattr(contents, field)) * width for field, width in _TYPED_ITEMSIZE.items())
        decoded += sum(len(value) for value in contents.bytes_contents)
    return 2 * decoded
