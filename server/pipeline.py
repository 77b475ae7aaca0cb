"""One camera's loop: capture → latest-frame slot → preprocess → infer → postprocess → subscribers.

Two threads per camera. The capture thread reads the source as fast as it delivers and keeps only
the newest frame (a frame replaced before inference is counted as dropped, reason "superseded"),
so a slow model never makes a camera buffer and lag. The inference thread takes whatever frame is
newest. When the source fails, the capture thread reopens it with capped exponential backoff.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel, Field

from edgecam.postprocessing import Ranked, top_k
from edgecam.preprocessing import preprocess
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.sources.base import Frame, FrameSource, SourceConfig, create_source

log = logging.getLogger(__name__)

_POLL_S = 0.2  # how long a thread waits for work before it looks at the stop flag again


class PipelineOptions(BaseModel):
    max_fps: float | None = Field(default=None, gt=0)  # cap on inferences per second; None: no cap
    subscriber_queue: int = Field(default=16, ge=1)  # predictions buffered per stream subscriber
    backoff_initial_s: float = Field(default=0.5, gt=0)  # first wait before reopening a failed source
    backoff_max_s: float = Field(default=10.0, gt=0)  # the wait doubles up to this
    stall_reads: int = Field(default=3, ge=1)  # consecutive empty reads that count as a stalled source
    fps_window_s: float = Field(default=5.0, gt=0)  # the window edgecam_camera_fps averages over


@dataclass(frozen=True)
class Prediction:
    camera: str
    frame_index: int  # 0-based position among the frames this pipeline captured (a looping file: % length)
    captured_at: float  # time.time() of the capture
    inferred_at: float  # time.time() when the prediction was made
    top_k: list[Ranked]  # best first: index, label, score
    latency: dict[str, float]  # seconds per stage: capture, preprocess, infer, postprocess, total
    label: int | None  # ground truth, when the source knows it
    model_name: str
    model_version: str


@dataclass(frozen=True)
class CameraStatus:
    name: str
    source: str
    up: bool
    model_name: str
    model_version: str
    frames_inferred: int
    frames_dropped: int  # superseded or failed inference
    fps: float
    last_frame_age_seconds: float | None  # None before the first frame
    online_accuracy: float | None  # top-1 over labelled frames; None without any
    subscribers: int


class Subscription:
    """A bounded queue of predictions for one consumer; a slow consumer loses its oldest ones."""

    def __init__(self, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        self._queue: collections.deque[Prediction] = collections.deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, prediction: Prediction) -> bool:
        """Queue a prediction; True if the oldest queued one had to be dropped for it."""
        with self._cond:
            dropped = len(self._queue) == self._queue.maxlen
            self._queue.append(prediction)
            self.dropped += dropped
            self._cond.notify()
        return dropped

    def get(self, timeout: float | None = None) -> Prediction | None:
        """The next prediction, or None after `timeout` seconds or once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            return self._queue.popleft() if self._queue else None

    def iter(self, idle_timeout: float | None = None) -> Iterator[Prediction]:
        """Predictions until closed, or until none came for `idle_timeout` seconds."""
        while (prediction := self.get(idle_timeout)) is not None:
            yield prediction

    def __iter__(self) -> Iterator[Prediction]:
        return self.iter()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._on_close(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CameraPipeline:
    """Capture and inference threads for one camera; `start()`, `subscribe()`, `stop()`."""

    def __init__(
        self,
        name: str,
        source: SourceConfig | FrameSource,
        model: LoadedModel,
        metrics: EdgecamMetrics,
        options: PipelineOptions | None = None,
    ) -> None:
        self.name = name
        self.options = options or PipelineOptions()
        self._source = source if isinstance(source, FrameSource) else create_source(source)
        self._model = model
        self._metrics = metrics
        self._stop = threading.Event()
        self._cond = threading.Condition()  # guards the slot and the counters below
        self._slot: tuple[int, Frame] | None = None
        self._captured = self._inferred = self._dropped = self._labelled = self._correct = 0
        self._last_captured_at: float | None = None
        self._inferred_times: collections.deque[float] = collections.deque()
        self._up = False
        self._subscribers: set[Subscription] = set()
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None
        metrics.watch_camera(name, self.status)

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._started_at = time.monotonic()
        for target, role in ((self._capture_loop, "capture"), (self._inference_loop, "infer")):
            # daemon: a source stuck in a driver call must not keep the process alive at exit
            thread = threading.Thread(target=target, name=f"edgecam-{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and end every subscription; returns within about `timeout` seconds."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning(
                    "camera %s: thread %s did not stop within %.1f s", self.name, thread.name, timeout
                )
        self._threads = []
        for subscription in list(self._subscribers):
            subscription.close()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.options.subscriber_queue, self._unsubscribe)
        with self._cond:
            self._subscribers.add(subscription)
        return subscription

    def set_model(self, model: LoadedModel) -> None:
        """Swap the model; the next frame is inferred with it."""
        with self._cond:
            self._model = model
        log.info("camera %s: now using model %s v%s", self.name, model.name, model.version)

    @property
    def model(self) -> LoadedModel:
        return self._model

    def status(self) -> CameraStatus:
        with self._cond:
            age = None if self._last_captured_at is None else max(0.0, time.time() - self._last_captured_at)
            return CameraStatus(
                name=self.name,
                source=self._source.describe(),
                up=self._up,
                model_name=self._model.name,
                model_version=self._model.version,
                frames_inferred=self._inferred,
                frames_dropped=self._dropped,
                fps=self._fps(),
                last_frame_age_seconds=age,
                online_accuracy=self._correct / self._labelled if self._labelled else None,
                subscribers=len(self._subscribers),
            )

    # -- capture thread -------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        backoff = self.options.backoff_initial_s
        attempt = 0
        while not self._stop.is_set():
            if attempt:
                self._metrics.reconnects.labels(camera=self.name).inc()
            attempt += 1
            delivered = self._run_source()
            if self._stop.is_set():
                break
            if delivered:  # it worked for a while: come back quickly, as after a first failure
                backoff = self.options.backoff_initial_s
            log.warning("camera %s: reopening %s in %.1f s", self.name, self._source.describe(), backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.options.backoff_max_s)

    def _run_source(self) -> bool:
        """Open the source and feed the slot until it fails or we stop; True if it gave any frame."""
        try:
            self._source.open()
        except Exception as exc:  # SourceError, or whatever a driver raises: both mean "retry"
            self._source_failed("open_failed", f"cannot open {self._source.describe()}: {exc}")
            return False
        self._up = True
        log.info("camera %s: %s is open", self.name, self._source.describe())
        delivered, misses = False, 0
        try:
            while not self._stop.is_set():
                try:
                    frame = self._source.read()
                except Exception as exc:
                    self._source_failed("read_failed", f"reading {self._source.describe()} failed: {exc}")
                    break
                if frame is None:
                    misses += 1
                    if misses >= self.options.stall_reads:
                        self._source_failed(
                            "stalled",
                            f"no frame from {self._source.describe()} in "
                            f"{misses} reads (stalled, disconnected or ended)",
                        )
                        break
                    continue
                delivered, misses = True, 0
                self._offer(frame)
        finally:
            self._up = False
            self._source.close()
        return delivered

    def _source_failed(self, reason: str, message: str) -> None:
        self._metrics.camera_errors.labels(camera=self.name, reason=reason).inc()
        log.warning("camera %s: %s", self.name, message)

    def _offer(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self._dropped += 1
                self._metrics.frames_dropped.labels(camera=self.name, reason="superseded").inc()
            self._slot = (self._captured, frame)
            self._captured += 1
            self._last_captured_at = frame.captured_at
            self._cond.notify()
        self._metrics.frames_captured.labels(camera=self.name).inc()

    # -- inference thread -----------------------------------------------------------------------
    def _inference_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not None or self._stop.is_set(), _POLL_S)
                item, self._slot = self._slot, None
                model = self._model
            if item is None:
                continue
            started = time.monotonic()
            try:
                prediction = self._infer(model, *item)
            except Exception:
                if not failing:  # one traceback per run of failures, not one per frame
                    log.exception("camera %s: inference with model %s failed", self.name, model.name)
                failing = True
                self._count_drop("infer_failed")
                continue
            failing = False
            self._publish(prediction)
            if self.options.max_fps:
                self._stop.wait(started + 1.0 / self.options.max_fps - time.monotonic())

    def _infer(self, model: LoadedModel, index: int, frame: Frame) -> Prediction:
        t0 = time.perf_counter()
        waited = max(0.0, time.time() - frame.captured_at)  # the frame's age when inference starts
        x = preprocess(frame.image, model.preprocessing)
        t1 = time.perf_counter()
        outputs = model.runtime.run({model.inputs[0].name: x})
        t2 = time.perf_counter()
        scores = outputs[model.postprocessing.output or model.outputs[0].name]
        ranked = top_k(scores, model.labels, model.postprocessing)
        t3 = time.perf_counter()
        latency = {
            "capture": waited,
            "preprocess": t1 - t0,
            "infer": t2 - t1,
            "postprocess": t3 - t2,
            "total": waited + (t3 - t0),
        }
        return Prediction(
            self.name,
            index,
            frame.captured_at,
            time.time(),
            ranked,
            latency,
            frame.label,
            model.name,
            model.version,
        )

    def _publish(self, prediction: Prediction) -> None:
        top1 = prediction.top_k[0].index if prediction.top_k else None
        now = time.monotonic()
        with self._cond:
            self._inferred += 1
            self._inferred_times.append(now)
            while self._inferred_times[0] < now - self.options.fps_window_s:
                self._inferred_times.popleft()
            if prediction.label is not None:
                self._labelled += 1
                self._correct += top1 == prediction.label
            subscribers = list(self._subscribers)
        self._metrics.observe_prediction(self.name, prediction.label, top1)
        self._metrics.observe_stages(self.name, prediction.latency)
        for subscription in subscribers:
            if subscription.put(prediction):
                self._metrics.stream_dropped.labels(camera=self.name).inc()

    # -- helpers --------------------------------------------------------------------------------
    def _count_drop(self, reason: str) -> None:
        with self._cond:
            self._dropped += 1
        self._metrics.frames_dropped.labels(camera=self.name, reason=reason).inc()

    def _fps(self) -> float:
        """Inferences per second over the window (or since start, if that is shorter). Holds _cond."""
        now = time.monotonic()
        recent = sum(1 for t in self._inferred_times if t >= now - self.options.fps_window_s)
        if self._started_at is None:
            return 0.0
        span = min(self.options.fps_window_s, now - self._started_at)
        return recent / span if span > 0 else 0.0

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._cond:
            self._subscribers.discard(subscription)
