"""Load an edgecam server the way a demanding fleet does: many prediction streams, some never read.

Used by the serving-limit tests and the reliability bench (bench/reliability/). The streams are
grpc.aio calls on one event loop in a thread of their own. A stream that is never read stops
taking messages once its HTTP/2 window is full: each such stream has its own connection with a
small window, so it blocks its server-side sender within a few predictions (and never holds back
the connection the reading streams share).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecam.datatypes import to_numpy
from edgecam.model import metadata_props
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc

# A reader's connection is its own (no subchannel sharing); a silent one also has a small window.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_SMALL_WINDOW = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))
_READERS_PER_CONNECTION = 25
# A 64 MiB request (the default max_message_bytes) less room for its protobuf framing.
VECTOR_64_MIB = (64 * 1024 * 1024 - 4096) // 4


@dataclass
class ReadingWindow:
    """What the reading streams received of the frames the camera inferred in a time window."""

    seconds: float
    frames: int  # distinct frames inferred in the window that any reader received
    shares: list[float] = field(default_factory=list)  # per reader: its part of those frames

    @property
    def worst_share(self) -> float:
        return min(self.shares) if self.shares else 0.0


class StreamLoad:
    """`streams` StreamPredictions calls to `camera` at `address`, of which `readers` read."""

    def __init__(self, address: str, camera: str, streams: int, readers: int) -> None:
        self.address, self.camera = address, camera
        self._streams, self._readers = streams, readers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgecam-load", daemon=True)
        self._received: list[list[tuple[int, float]]] = [[] for _ in range(readers)]
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: list[grpc.aio.UnaryStreamCall] = []
        self._errors: list[str] = []
        self._opened_at = 0.0

    def __enter__(self) -> StreamLoad:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(60)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        # Not closed: gRPC's poller may still post the cancelled calls' last events to this loop,
        # and posting to a closed loop logs an error; a stopped loop just drops them.

    @property
    def errors(self) -> list[str]:
        """Status of the streams that ended with an error (none, while the server copes)."""
        return list(self._errors)

    async def _open(self) -> None:
        request = v1.StreamPredictionsRequest(camera=self.camera)
        for index in range(self._readers):
            if index % _READERS_PER_CONNECTION == 0:
                self._channels.append(grpc.aio.insecure_channel(self.address, options=_OWN_CONNECTION))
            call = v1_grpc.CameraServiceStub(self._channels[-1]).StreamPredictions(request)
            self._tasks.append(asyncio.ensure_future(self._read(call, self._received[index])))
        for _ in range(self._streams - self._readers):
            channel = grpc.aio.insecure_channel(self.address, options=_OWN_CONNECTION + _SMALL_WINDOW)
            self._channels.append(channel)
            self._calls.append(v1_grpc.CameraServiceStub(channel).StreamPredictions(request))
        self._opened_at = time.time()

    async def _read(self, call: grpc.aio.UnaryStreamCall, into: list[tuple[int, float]]) -> None:
        try:
            async for prediction in call:
                into.append((prediction.frame_index, prediction.inference_time))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._errors.append(f"{exc.code().name}: {exc.details()}")
        except asyncio.CancelledError:
            pass

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for call in self._calls:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close(grace=None)
        await asyncio.sleep(0.1)  # let the calls' final events arrive while the loop still runs

    def wait_open(self, subscribers: Callable[[], int], timeout: float) -> None:
        """Until the server counts every stream as a subscriber and every reader has a prediction."""
        deadline = time.monotonic() + timeout
        while subscribers() < self._streams or not all(self._received):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{subscribers()} of {self._streams} streams open and "
                    f"{sum(map(bool, self._received))} of {self._readers} readers served after {timeout} s; "
                    f"errors: {self._errors[:3]}"
                )
            time.sleep(0.05)
        self._opened_at = time.time()

    def reading_window(self, margin_s: float = 0.5) -> ReadingWindow:
        """Frames inferred from the moment all streams were open until `margin_s` ago (so every
        reader had time to receive the last ones), and each reader's share of them."""
        end = time.time() - margin_s
        seen = [{i for i, at in received if self._opened_at <= at <= end} for received in self._received]
        union = set().union(*seen) if seen else set()
        shares = [len(s) / len(union) if union else 0.0 for s in seen]
        return ReadingWindow(max(end - self._opened_at, 1e-9), len(union), shares)


def health_check_ms(address: str, count: int, interval_s: float = 0.05) -> list[float]:
    """Milliseconds of `count` grpc.health Check calls (service ""), one every `interval_s`."""
    with grpc.insecure_channel(address, options=_OWN_CONNECTION) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        out = []
        for _ in range(count):
            began = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            out.append((time.perf_counter() - began) * 1000)
            time.sleep(interval_s)
    return out


def infer_latencies_ms(address: str, model: str, count: int) -> list[float]:
    """Milliseconds of `count` ModelInfer calls on zeros of `model`'s input (its -1 dims as 1)."""
    with grpc.insecure_channel(address, options=_OWN_CONNECTION) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=10)
        request = oip.ModelInferRequest(model_name=model)
        for spec in meta.inputs:
            shape = [max(int(d), 1) for d in spec.shape]
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            request.raw_input_contents.append(np.zeros(shape, to_numpy(spec.datatype)).tobytes())
        for _ in range(10):
            stub.ModelInfer(request, timeout=10)
        out = []
        for _ in range(count):
            began = time.perf_counter()
            stub.ModelInfer(request, timeout=10)
            out.append((time.perf_counter() - began) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def rss_bytes(pid: int | str = "self", peak: bool = False) -> int:
    """Resident memory of a process (VmRSS), or its peak so far (VmHWM), from /proc."""
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def scrape(metrics_url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's value from a Prometheus /metrics endpoint (None if absent)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return float(sample.value)
    return None


def examine_streams(
    address: str,
    metrics_url: str,
    camera: str,
    model: str,
    streams: int = 200,
    readers: int = 100,
    seconds: float = 3.0,
    calls: int = 200,
) -> dict[str, float]:
    """Issue 18's stream examination against a running server whose `camera` runs at a known rate:
    ModelInfer latency idle and under `streams` open streams (`readers` of them reading), health
    Check latency under them, the readers' share of the frames, the camera's rate, the drops."""
    # ModelInfer and health are timed from another process: the stream clients' loop here takes
    # the GIL for every prediction it receives, which would delay a caller in this process.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as prober:
        idle = prober.submit(infer_latencies_ms, address, model, calls).result()
        labels = {"camera": camera}
        with StreamLoad(address, camera, streams=streams, readers=readers) as load:
            load.wait_open(lambda: int(scrape(metrics_url, "edgecam_stream_subscribers", labels) or 0), 60)
            started = time.monotonic()
            busy = prober.submit(infer_latencies_ms, address, model, calls).result()
            health = prober.submit(health_check_ms, address, 20).result()
            time.sleep(max(0.0, started + seconds - time.monotonic()))
            window = load.reading_window()
            dropped = scrape(metrics_url, "edgecam_stream_predictions_dropped_total", labels) or 0.0
            errors = load.errors
    return {
        "streams": streams,
        "readers": readers,
        "infer_p99_idle_ms": percentile(idle, 99),
        "infer_p99_streams_ms": percentile(busy, 99),
        "infer_median_idle_ms": percentile(idle, 50),
        "infer_median_streams_ms": percentile(busy, 50),
        "health_max_ms": max(health),
        "camera_fps": window.frames / window.seconds,
        "window_s": window.seconds,
        "frames_in_window": window.frames,
        "worst_reader_share": window.worst_share,
        "stream_predictions_dropped": dropped,
        "stream_errors": len(errors),
    }


def big_request(model: str, input_name: str, count: int) -> bytes:
    """A serialized ModelInferRequest of one FP32 vector of `count` values in raw contents."""
    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[count])
    request.raw_input_contents.append(bytes(count * 4))
    return request.SerializeToString()


def flood(address: str, message: bytes, concurrent: int, seconds: float) -> dict[str, int]:
    """`concurrent` clients, each on its own connection, sending `message` as ModelInfer again and
    again for `seconds`; returns how many calls ended with each status."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with grpc.insecure_channel(
            address, options=(*_OWN_CONNECTION, ("grpc.max_send_message_length", len(message) + 1024))
        ) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=None,
                response_deserializer=None,
            )
            while time.monotonic() < deadline:
                try:
                    call(message, timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1

    threads = [threading.Thread(target=client, name=f"edgecam-flood-{k}") for k in range(concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def examine_memory(
    address: str,
    metrics_url: str,
    pid: int,
    camera: str,
    model: str,
    input_name: str,
    count: int,
    concurrent: int = 16,
    seconds: float = 3.0,
) -> dict[str, object]:
    """Issue 18's memory examination: `concurrent` clients send requests of `count` FP32 values to
    `model` (vector_model's) for `seconds`; the server's RSS peak over its RSS before, the
    statuses, and `camera`'s inference rate during the flood."""
    message = big_request(model, input_name, count)
    labels = {"camera": camera}
    with contextlib.suppress(OSError):  # reset the peak (VmHWM) to now, so start-up does not count
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    rss_before = rss_bytes(pid)
    frames_before = scrape(metrics_url, "edgecam_frames_total", labels) or 0.0
    began = time.monotonic()
    statuses = flood(address, message, concurrent, seconds)
    elapsed = time.monotonic() - began
    frames = (scrape(metrics_url, "edgecam_frames_total", labels) or 0.0) - frames_before
    return {
        "concurrent": concurrent,
        "request_bytes": len(message),
        "statuses": statuses,
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": rss_bytes(pid, peak=True),
        "rss_peak_growth_bytes": rss_bytes(pid, peak=True) - rss_before,
        "rss_after_bytes": rss_bytes(pid),
        "camera_fps_during": frames / elapsed,
        "seconds": elapsed,
        "budget_bytes": scrape(metrics_url, "edgecam_request_memory_budget_bytes") or 0.0,
    }


def vector_model(path: Path, length: int, name: str = "vsum") -> Path:
    """Write an ONNX model taking one FP32 vector "x" of `length` to its sum [1]: a model whose
    requests are as large as wanted, for memory examinations. (Fixed length: the server's warm-up
    run at load feeds zeros of the declared shape, which cannot have a dynamic dimension.)"""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=1)],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [length])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    # Required of every edgecam model; unused, as no camera runs this one.
    pre = Preprocessing(height=1, width=1, color="GRAY")
    post = Postprocessing(output="sum", apply_softmax=False, top_k=1)
    helper.set_model_props(model, metadata_props(name, pre, post, ["sum"]))
    onnx.save(model, str(path))
    return path
