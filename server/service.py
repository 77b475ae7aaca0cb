"""The transport-agnostic core: models, cameras, inference and prediction streams.

The gRPC servicers are thin translations onto this class, so every rule about what a valid
request is lives here once, whatever protocol carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgecam import __version__
from edgecam.datatypes import to_numpy
from edgecam.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.pipeline import CameraPipeline, Prediction
from edgecam.server.repository import ModelRepository
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.statistics import ModelStats, StatisticsBook

log = logging.getLogger(__name__)

SERVER_NAME = "edgecam"


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: Sequence[Tensor]
    requested_outputs: Sequence[str] = ()


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: Sequence[Tensor]


class EdgeService:
    """Owns the loaded models and the camera pipelines for the life of the server."""

    def __init__(
        self,
        repository: ModelRepository,
        cameras: Mapping[str, CameraPipeline],
        metrics: EdgecamMetrics,
        max_streams: int = 256,
    ) -> None:
        self.repository = repository
        self.statistics = StatisticsBook()
        self._cameras = dict(cameras)
        self._metrics = metrics
        self._stopping = threading.Event()
        self._max_streams = max_streams
        self._streams = 0  # open prediction streams, all cameras
        self._streams_lock = threading.Lock()

    # -- health -------------------------------------------------------------------------------
    def live(self) -> bool:
        return not self._stopping.is_set()

    def ready(self) -> bool:
        return self.live() and bool(self.repository.serving())

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.model(name, version)
        except NotFound:
            return False
        return self.live()

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, __version__, ["edgecam_cameras", "model_metadata"]

    # -- models -------------------------------------------------------------------------------
    def model(self, name: str, version: str = "") -> LoadedModel:
        return self.repository.get(name, version)

    def models(self) -> list[LoadedModel]:
        return self.repository.serving()

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        models = [self.model(name, version)] if name else self.models()
        return [self.statistics.get(m.name, m.version) for m in models]

    def unload_model(self, name: str) -> None:
        users = [c.name for c in self._cameras.values() if c.model.name == name]
        if users:
            raise FailedPrecondition(f"model {name!r} is used by cameras {users}; it cannot be unloaded")
        self.repository.unload(name)

    def infer(self, request: InferRequest) -> InferResponse:
        if self._stopping.is_set():
            raise Unavailable("server is shutting down")
        # This reference keeps the version alive for this request even if a reload swaps it out now.
        model = self.model(request.model_name, request.model_version)
        start = time.perf_counter_ns()
        code, infer_ns = "OK", None
        try:
            feeds = _validated_inputs(model, request.inputs)
            wanted = _validated_outputs(model, request.requested_outputs)
            infer_start = time.perf_counter_ns()
            results = model.runtime.run(feeds)
            infer_ns = time.perf_counter_ns() - infer_start
            outputs = [_as_tensor(spec_name, results[spec_name]) for spec_name in wanted]
        except InvalidArgument:
            code = "INVALID_ARGUMENT"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            elapsed = time.perf_counter_ns() - start
            self._metrics.observe_request(model.name, code, elapsed / 1e9)
            self.statistics.record(model.name, model.version, code == "OK", elapsed, infer_ns)
        return InferResponse(model.name, model.version, request.id, outputs)

    # -- cameras ------------------------------------------------------------------------------
    def cameras(self) -> list[CameraPipeline]:
        return list(self._cameras.values())

    def camera(self, name: str) -> CameraPipeline:
        found = self._cameras.get(name)
        if found is None:
            raise NotFound(f"unknown camera {name!r}; this server has cameras {sorted(self._cameras)}")
        return found

    async def stream_predictions(self, camera: str) -> AsyncIterator[Prediction]:
        """Predictions of one camera, on the calling event loop, until the caller goes away or the
        server stops. A slow reader loses its oldest predictions (counted per camera), never the
        camera's rate, and costs at most its queue."""
        pipeline = self.camera(camera)
        if self._stopping.is_set():
            raise Unavailable("server is shutting down")
        with self._stream_slot():
            subscription = pipeline.subscribe_async(asyncio.get_running_loop())
            try:
                while not self._stopping.is_set() and not subscription.closed:
                    prediction = await subscription.get(timeout=0.5)
                    if prediction is not None:
                        yield prediction
            finally:  # also when the client cancels: the task is cancelled inside get()
                subscription.close()
        if self._stopping.is_set():
            # A status, not a silent end: the client knows to reconnect rather than assume the camera ended.
            raise Unavailable(f"server is shutting down; stream of camera {camera!r} ended")

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[None]:
        with self._streams_lock:
            if self._streams >= self._max_streams:
                self._metrics.requests_refused.labels(reason="max_streams").inc()
                raise ResourceExhausted(
                    f"{self._streams} prediction streams are open, the limit (max_streams) is "
                    f"{self._max_streams}; close one or raise max_streams"
                )
            self._streams += 1
        try:
            yield
        finally:
            with self._streams_lock:
                self._streams -= 1

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for pipeline in self._cameras.values():
            pipeline.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Refuse new work, end prediction streams, stop the cameras: all at once, in about `timeout` s.

        Cameras stop in parallel: a silent network camera blocks its capture thread in a driver read
        (up to its frame-age limit), and joining them one after another made shutdown take that long
        per camera. Threads still blocked at the deadline are daemons and are left behind.
        """
        self._stopping.set()
        self.repository.stop()
        deadline = time.monotonic() + timeout
        for pipeline in self._cameras.values():
            pipeline.request_stop()
        for pipeline in self._cameras.values():
            pipeline.join(deadline)


def _validated_inputs(model: LoadedModel, inputs: Sequence[Tensor]) -> dict[str, np.ndarray]:
    expected = {spec.name: spec for spec in model.inputs}
    names = [tensor.name for tensor in inputs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidArgument(f"inputs {repeated} appear more than once; send each input once")
    if sorted(names) != sorted(expected):
        raise InvalidArgument(
            f"model {model.name!r} expects inputs {sorted(expected)}, the request has {names}"
        )
    feeds = {}
    for tensor in inputs:
        spec = expected[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input {tensor.name!r} has datatype {tensor.datatype}; model {model.name!r} expects "
                f"{spec.datatype}"
            )
        if not _shape_matches(tensor.shape, spec.shape):
            raise InvalidArgument(
                f"input {tensor.name!r} has shape {list(tensor.shape)}; model {model.name!r} expects "
                f"{spec.shape} (-1: any size)"
            )
        feeds[tensor.name] = tensor.data
    return feeds


def _shape_matches(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected, strict=True))


def _validated_outputs(model: LoadedModel, requested: Sequence[str]) -> list[str]:
    available = [spec.name for spec in model.outputs]
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidArgument(f"model {model.name!r} has no output {unknown}; its outputs are {available}")
    repeated = sorted({name for name in requested if list(requested).count(name) > 1})
    if repeated:
        raise InvalidArgument(f"outputs {repeated} are requested more than once; request each output once")
    return list(requested) or available


def _as_tensor(name: str, value: np.ndarray) -> Tensor:
    from edgecam.datatypes import from_numpy

    array = np.ascontiguousarray(value)
    return Tensor(name, from_numpy(array.dtype), tuple(int(d) for d in array.shape), array)


# numpy refuses arrays of more than 64 dimensions (32 before numpy 2); no model input has more than a
# handful, so a longer shape is a malformed request, refused before numpy sees it.
MAX_RANK = 32


def _checked_shape(name: str, datatype: str, shape: Sequence[int]) -> tuple[np.dtype, tuple[int, ...], int]:
    """The dtype, the shape and its element count, or InvalidArgument naming what is wrong.

    The count is a Python int: a shape such as [2**40, 2**40] overflows int64 (numpy's prod wraps
    around silently), and must be refused as a size mismatch, not crash a reshape.
    """
    try:
        dtype = to_numpy(datatype)
    except ValueError as exc:
        raise InvalidArgument(f"input {name!r}: {exc}") from None
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"input {name!r} has {len(dims)} dimensions; at most {MAX_RANK} are accepted")
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"input {name!r} has a negative dimension in shape {list(dims)}")
    # numpy multiplies the dimensions of a reshape in its index type before it notices a zero among
    # them: [2**63-1, 2**32, 0] holds no element and still cannot be made.
    if math.prod(d for d in dims if d) > np.iinfo(np.intp).max:
        raise InvalidArgument(f"input {name!r}: shape {list(dims)} needs more elements than an array holds")
    return dtype, dims, math.prod(dims)


def decode_tensor(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> Tensor:
    """Build a tensor from raw little-endian bytes, checking the byte size against the shape; the
    array is a view of `raw` (read-only) where the byte order allows."""
    dtype, dims, count = _checked_shape(name, datatype, shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input {name!r}: {len(raw)} bytes of raw contents, but {datatype} with shape {list(dims)} "
            f"needs {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(dims)
    return Tensor(name, datatype, dims, data)


def typed_tensor(
    name: str, datatype: str, shape: Sequence[int], values: Sequence[bool | int | float], field: str
) -> Tensor:
    """Build a tensor from typed contents (`field` names where they came from, for messages).

    The wire's integer fields are wider than most datatypes (INT8 travels in int32 values), so every
    integer is checked against its datatype's range: numpy would raise OverflowError or wrap.
    """
    dtype, dims, count = _checked_shape(name, datatype, shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(values)} values in contents.{field}, but shape {list(dims)} needs {count}"
        )
    if dtype.kind in "iu":
        wide = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        outside = (wide < info.min) | (wide > info.max)
        if outside.any():
            at = int(np.argmax(outside))
            raise InvalidArgument(
                f"input {name!r}: value {values[at]} at position {at} of contents.{field} is out of "
                f"range for {datatype} ({info.min}..{info.max})"
            )
        array = wide.astype(dtype)
    else:
        array = np.asarray(values, dtype=dtype)
    return Tensor(name, datatype, dims, array.reshape(dims))
