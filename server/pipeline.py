"""One camera's loop: capture (+ preprocess) → newest-frame slot → infer → postprocess → subscribers.

Two threads per camera. The capture thread (server/capture.py) reads the source as fast as it
delivers, reopening it with backoff when it fails or stalls, and preprocesses each frame for the
current model, so preprocessing overlaps the previous frame's inference. It keeps only the newest
frame: one replaced before inference is counted as dropped (reason "superseded"), so a slow model
never makes a camera buffer and lag. The inference thread takes whatever frame is newest, runs the
model, publishes, and while it waits for frames it runs the capture side's frame-age watchdog.

Several pipelines may share one LoadedModel: runtimes serialise or parallelise `run` themselves.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from edgecam.postprocessing import Ranked, top_k
from edgecam.preprocessing import Preprocessing, preprocess
from edgecam.server.capture import CaptureOptions, SourceRunner
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.shadow import ShadowChecker
from edgecam.server.sources.base import Frame, FrameSource, SourceConfig, create_source
from edgecam.server.subscriptions import AsyncSubscription, Subscription

log = logging.getLogger(__name__)

# How long the inference thread waits for a frame before it looks at the stop flag and the
# frame-age watchdog again: stall detection is late by at most this (or one inference, if longer).
_POLL_S = 0.1


class PipelineOptions(CaptureOptions):
    """Per-camera knobs; the source-healing ones (backoff, stall_reads, max_frame_age_s) are inherited."""

    max_fps: float | None = Field(default=None, gt=0)  # cap on inferences per second; None: no cap
    subscriber_queue: int = Field(default=16, ge=1)  # predictions buffered per stream subscriber
    fps_window_s: float = Field(default=5.0, gt=0)  # the window edgecam_camera_fps averages over
    # Preprocess every captured frame on the capture thread, overlapping inference. It costs one
    # preprocess per superseded frame (CPU the capture thread spends in vain when the camera is much
    # faster than the model); False, or any max_fps, preprocesses only inferred frames, inline.
    preprocess_ahead: bool = True


@dataclass(frozen=True)
class _Pending:
    """The newest captured frame, waiting for the inference thread."""

    index: int
    frame: Frame
    spec: Preprocessing | None = None  # the preprocessing `tensor` was made with; None: not done
    tensor: np.ndarray | None = None
    preprocess_s: float = 0.0


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


class CameraPipeline:
    """Capture and inference threads for one camera; `start()`, `subscribe()`, `stop()`."""

    def __init__(
        self,
        name: str,
        source: SourceConfig | FrameSource,
        model: LoadedModel,
        metrics: EdgecamMetrics,
        options: PipelineOptions | None = None,
        shadow: ShadowChecker | None = None,
    ) -> None:
        self.name = name
        self._shadow = shadow  # off the hot path: samples frames for the reference-model check
        self.options = options or PipelineOptions()
        source = source if isinstance(source, FrameSource) else create_source(source)
        self._capture = SourceRunner(name, source, metrics, self.options, self._offer)
        self._model = model
        self._metrics = metrics
        self._stop = threading.Event()
        self._cond = threading.Condition()  # guards the slot and the counters below
        self._slot: _Pending | None = None
        self._captured = self._inferred = self._dropped = self._labelled = self._correct = 0
        self._last_captured_at: float | None = None
        self._inferred_times: collections.deque[float] = collections.deque()
        self._subscribers: set[Subscription | AsyncSubscription] = set()
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None
        self._failing: str | None = None  # the drop reason of the current run of failures
        metrics.watch_camera(name, self.status)

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._started_at = time.monotonic()
        capture = functools.partial(self._capture.run, self._stop)
        for target, role in ((capture, "capture"), (self._inference_loop, "infer")):
            # daemon: a source stuck in a driver call must not keep the process alive at exit
            thread = threading.Thread(target=target, name=f"edgecam-{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._shadow is not None:
            self._shadow.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and end every subscription; returns within about `timeout` seconds."""
        self.request_stop()
        self.join(time.monotonic() + timeout)

    def request_stop(self) -> None:
        """Tell both threads to stop, without waiting: a server stops all its cameras at once."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, deadline: float) -> None:
        """Wait until the monotonic `deadline` for the threads, then end every subscription.

        A capture thread blocked inside a driver's read (a silent network camera) may outlive the
        deadline; it is a daemon thread and the capture loop exits as soon as that read returns.
        """
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("camera %s: thread %s did not stop in time; left behind", self.name, thread.name)
        self._threads = []
        if self._shadow is not None:
            self._shadow.stop(max(0.0, deadline - time.monotonic()))
        for subscription in list(self._subscribers):
            subscription.close()

    def subscribe(self) -> Subscription:
        """A queue of this camera's predictions for a thread; close it (or use `with`) when done."""
        subscription = Subscription(self.options.subscriber_queue, self._unsubscribe)
        with self._cond:
            self._subscribers.add(subscription)
        return subscription

    def subscribe_async(self, loop: asyncio.AbstractEventLoop) -> AsyncSubscription:
        """The same for a coroutine on `loop` (the gRPC server's); call it on that loop."""
        subscription = AsyncSubscription(self.options.subscriber_queue, self._unsubscribe, loop)
        with self._cond:
            self._subscribers.add(subscription)
        return subscription

    def set_model(self, model: LoadedModel) -> None:
        """Swap the model; the next frame is inferred with it."""
        if self._shadow is not None:
            self._shadow.set_model(model)  # loads the new reference here, on the reload path
        with self._cond:
            self._model = model
        log.info("camera %s: now using model %s v%s", self.name, model.name, model.version)

    @property
    def model(self) -> LoadedModel:
        return self._model

    def status(self) -> CameraStatus:
        up = self._capture.up
        with self._cond:
            age = None if self._last_captured_at is None else max(0.0, time.time() - self._last_captured_at)
            return CameraStatus(
                name=self.name,
                source=self._capture.source.describe(),
                up=up,
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
    def _offer(self, frame: Frame) -> None:
        """Make `frame` the newest one, preprocessed for the current model while inference runs."""
        pending = self._prepare_ahead(frame)
        with self._cond:
            if self._slot is not None:
                self._dropped += 1
                self._metrics.frames_dropped.labels(camera=self.name, reason="superseded").inc()
            self._slot = _Pending(self._captured, frame, *pending)
            self._captured += 1
            self._last_captured_at = frame.captured_at
            self._cond.notify()
        self._metrics.frames_captured.labels(camera=self.name).inc()

    def _prepare_ahead(self, frame: Frame) -> tuple[Preprocessing | None, np.ndarray | None, float]:
        if not self.options.preprocess_ahead or self.options.max_fps:
            return None, None, 0.0
        spec = self._model.preprocessing
        started = time.perf_counter()
        try:
            tensor = preprocess(frame.image, spec)
        except Exception:  # the inference thread retries it inline and counts the failure there
            return None, None, 0.0
        return spec, tensor, time.perf_counter() - started

    # -- inference thread -----------------------------------------------------------------------
    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            pending, model = self._take()
            if pending is None:
                continue
            started = time.monotonic()
            prediction = self._infer(model, pending)
            if prediction is None:
                continue
            self._publish(prediction)
            if self.options.max_fps:
                self._stop.wait(started + 1.0 / self.options.max_fps - time.monotonic())

    def _take(self) -> tuple[_Pending | None, LoadedModel]:
        """The newest frame (None after _POLL_S without one) and the model to run on it."""
        self._capture.check_stalled()  # here, so a read blocked in a driver cannot delay it
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._stop.is_set(), _POLL_S)
            pending, self._slot = self._slot, None
            return pending, self._model

    def _infer(self, model: LoadedModel, pending: _Pending) -> Prediction | None:
        """Preprocess (unless done ahead), run, postprocess; None if a stage failed (counted)."""
        frame = pending.frame
        t0 = time.perf_counter()
        try:
            stage = "preprocess_failed"
            x, preprocess_s = pending.tensor, pending.preprocess_s
            if x is None or pending.spec is not model.preprocessing:  # not done ahead, or model swapped
                x = preprocess(frame.image, model.preprocessing)
                preprocess_s = time.perf_counter() - t0
            stage = "infer_failed"
            t1 = time.perf_counter()
            feeds = {model.inputs[0].name: x}
            outputs = model.runtime.run(feeds)
            t2 = time.perf_counter()
            scores = outputs[model.postprocessing.output or model.outputs[0].name]
            if self._shadow is not None:
                self._shadow.offer(feeds, scores)
            ranked = top_k(scores, model.labels, model.postprocessing)
        except Exception:
            self._stage_failed(stage, model)
            return None
        self._failing = None
        t3 = time.perf_counter()
        inferred_at = time.time()
        total = max(0.0, inferred_at - frame.captured_at)
        latency = {
            # time in the slot (and in the source's read): the age at inference start, less preprocessing
            "capture": max(0.0, total - (t3 - t1) - preprocess_s),
            "preprocess": preprocess_s,
            "infer": t2 - t1,
            "postprocess": t3 - t2,
            "total": total,
        }
        return Prediction(
            self.name,
            pending.index,
            frame.captured_at,
            inferred_at,
            ranked,
            latency,
            frame.label,
            model.name,
            model.version,
        )

    def _stage_failed(self, reason: str, model: LoadedModel) -> None:
        if self._failing != reason:  # one traceback per run of failures, not one per frame
            log.exception("camera %s: %s with model %s", self.name, reason.replace("_", " "), model.name)
        self._failing = reason
        self._count_drop(reason)

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

    def _unsubscribe(self, subscription: Subscription | AsyncSubscription) -> None:
        with self._cond:
            self._subscribers.discard(subscription)
