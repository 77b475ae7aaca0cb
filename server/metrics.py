"""THE metric catalog: every metric the server exports is declared here, on an injected registry.

Conventions (docs/architecture.md): prefix `edgecam_`, base units, counters end in `_total`, bounded labels.
Values that only mean something at scrape time (frame age, fps, model memory) come from callbacks
that a Collector calls when Prometheus scrapes, so no thread polls them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from edgecam import __version__
from edgecam.server.runtime.base import LoadedModel

log = logging.getLogger(__name__)

# Camera-scale latencies: a 1 ms classifier up to a 1 s detector on a small ARM core.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Shadow score drift: |Δ probability| from float noise (1e-3) up to a different class (1).
SHADOW_DRIFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
STAGES = ("capture", "preprocess", "infer", "postprocess", "total")


class CameraSnapshot(Protocol):
    """What the scrape-time collector reads from a camera pipeline (pipeline.CameraStatus has it)."""

    @property
    def up(self) -> bool: ...
    @property
    def fps(self) -> float: ...
    @property
    def last_frame_age_seconds(self) -> float | None: ...
    @property
    def online_accuracy(self) -> float | None: ...
    @property
    def subscribers(self) -> int: ...


class EdgecamMetrics:
    """All edgecam metrics on one registry (a fresh registry per test, the global one never)."""

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        self.registry = registry
        r = registry
        self.stage_latency = Histogram(
            "edgecam_stage_latency_seconds",
            "Per-frame latency of each pipeline stage "
            "(capture: frame age when inference starts; total: capture to prediction).",
            ["camera", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames = Counter("edgecam_frames", "Frames inferred.", ["camera"], registry=r)
        self.frames_dropped = Counter(
            "edgecam_frames_dropped",
            "Frames captured but never inferred (superseded: a newer frame replaced it; "
            "preprocess_failed: the frame could not be preprocessed; infer_failed: the model raised).",
            ["camera", "reason"],
            registry=r,
        )
        self.frames_captured = Counter(
            "edgecam_frames_captured", "Frames read from the source.", ["camera"], registry=r
        )
        self.reconnects = Counter(
            "edgecam_camera_reconnects", "Attempts to reopen a camera source.", ["camera"], registry=r
        )
        self.camera_errors = Counter(
            "edgecam_camera_errors",
            "Camera source failures (open_failed, read_failed, stalled).",
            ["camera", "reason"],
            registry=r,
        )
        self.predictions_labelled = Counter(
            "edgecam_predictions_labelled",
            "Predictions of frames with a ground-truth label.",
            ["camera"],
            registry=r,
        )
        self.predictions_correct = Counter(
            "edgecam_predictions_correct",
            "Labelled predictions whose top-1 class was right.",
            ["camera"],
            registry=r,
        )
        self.stream_dropped = Counter(
            "edgecam_stream_predictions_dropped",
            "Predictions a slow stream subscriber lost (oldest dropped from its queue).",
            ["camera"],
            registry=r,
        )
        self.requests = Counter(
            "edgecam_requests", "Direct ModelInfer requests by result code.", ["model", "code"], registry=r
        )
        # Operator limits (settings max_streams, request_memory_budget_bytes): what they refused.
        self.requests_refused = Counter(
            "edgecam_requests_refused",
            "Calls refused with RESOURCE_EXHAUSTED at an operator limit "
            "(memory_budget: request memory budget full; max_streams: too many open streams).",
            ["reason"],
            registry=r,
        )
        for reason in ("memory_budget", "max_streams"):
            self.requests_refused.labels(reason=reason)
        self.request_memory = Gauge(
            "edgecam_request_memory_bytes",
            "Memory reserved by requests in flight (message, decoded inputs and their runtime copy).",
            registry=r,
        )
        self.request_memory_budget = Gauge(
            "edgecam_request_memory_budget_bytes",
            "The budget request_memory_bytes may not exceed (setting request_memory_budget_bytes).",
            registry=r,
        )
        self.model_loads = Counter(
            "edgecam_model_loads",
            "Model versions verified and swapped in (start-up and hot reloads).",
            ["model"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "edgecam_model_load_failures",
            "Model versions refused at load (reason: the failed check, e.g. sha256); the old one serves on.",
            ["model", "reason"],
            registry=r,
        )
        # Start-up served an older version because the newest was refused.
        self.model_fallbacks = Counter(
            "edgecam_model_fallbacks",
            "Start-ups that serve an older version of a model because newer ones were refused.",
            ["model"],
            registry=r,
        )
        self.request_latency = Histogram(
            "edgecam_request_latency_seconds",
            "ModelInfer request latency.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Shadow mode (shadow.py): sampled frames rerun on the fp32 reference, off the hot path.
        shadow = ["camera", "model"]
        self.shadow_samples = Counter(
            "edgecam_shadow_samples",
            "Sampled frames compared with the reference model.",
            shadow,
            registry=r,
        )
        self.shadow_agreements = Counter(
            "edgecam_shadow_agreements",
            "Shadow samples whose top-1 class matched the reference model's.",
            shadow,
            registry=r,
        )
        self.shadow_skipped = Counter(
            "edgecam_shadow_skipped",
            "Frames sampled for shadow mode but skipped because the reference queue was full.",
            shadow,
            registry=r,
        )
        self.shadow_agreement_ratio = Gauge(
            "edgecam_shadow_agreement_ratio",
            "Top-1 agreement with the reference model over shadow samples since start "
            "(absent before the first sample).",
            shadow,
            registry=r,
        )
        self.shadow_drift = Histogram(
            "edgecam_shadow_score_drift",
            "Max absolute difference between the model's and the reference's scores "
            "(probabilities when the model applies softmax) per shadow sample.",
            shadow,
            buckets=SHADOW_DRIFT_BUCKETS,
            registry=r,
        )
        build = Gauge(
            "edgecam_build_info", "edgecam version of this server (always 1).", ["version"], registry=r
        )
        build.labels(version=__version__).set(1)
        self._cameras: dict[str, Callable[[], CameraSnapshot]] = {}
        self._models: Callable[[], Iterable[LoadedModel]] = list
        self._lock = threading.Lock()
        registry.register(_ScrapeTimeCollector(self))
        if process:
            ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds

    # -- what pipelines and the service call ---------------------------------------------------
    def watch_camera(self, camera: str, snapshot: Callable[[], CameraSnapshot]) -> None:
        """Export `camera`'s scrape-time gauges from `snapshot()` until unwatch_camera."""
        with self._lock:
            self._cameras[camera] = snapshot
        for counter in (
            self.frames,
            self.frames_captured,
            self.reconnects,
            self.predictions_labelled,
            self.predictions_correct,
            self.stream_dropped,
        ):
            counter.labels(camera=camera)  # export 0 from the start, so rate() sees the first increase
        self.frames_dropped.labels(camera=camera, reason="superseded")

    def unwatch_camera(self, camera: str) -> None:
        with self._lock:
            self._cameras.pop(camera, None)

    def watch_models(self, models: Callable[[], Iterable[LoadedModel]]) -> None:
        """Export edgecam_model_memory_bytes of whatever `models()` returns at scrape time."""
        self._models = models

    def observe_stages(self, camera: str, latency: dict[str, float]) -> None:
        for stage, seconds in latency.items():
            self.stage_latency.labels(camera=camera, stage=stage).observe(seconds)

    def observe_request(self, model: str, code: str, seconds: float) -> None:
        self.requests.labels(model=model, code=code).inc()
        self.request_latency.labels(model=model).observe(seconds)

    def observe_prediction(self, camera: str, label: int | None, top1: int | None) -> None:
        self.frames.labels(camera=camera).inc()
        if label is not None:
            self.predictions_labelled.labels(camera=camera).inc()
            if top1 == label:
                self.predictions_correct.labels(camera=camera).inc()

    def watch_shadow(self, camera: str, model: str) -> None:
        """Export the shadow counters of (`camera`, `model`) at 0, so rate() sees the first increase."""
        for counter in (self.shadow_samples, self.shadow_agreements, self.shadow_skipped):
            counter.labels(camera=camera, model=model)
        self.shadow_drift.labels(camera=camera, model=model)

    # -- what the collector reads ---------------------------------------------------------------
    def _camera_snapshots(self) -> Iterator[tuple[str, CameraSnapshot]]:
        with self._lock:
            cameras = list(self._cameras.items())
        for name, snapshot in cameras:
            try:
                yield name, snapshot()
            except Exception:  # a broken callback must not break the whole scrape
                log.exception("camera %s: status callback failed during scrape", name)


class _ScrapeTimeCollector:
    """Gauges computed when Prometheus scrapes, from camera snapshots and the loaded models."""

    def __init__(self, metrics: EdgecamMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        self._fill_cameras(*families[:5])
        self._fill_models(families[5])
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        cam = ["camera"]
        return (
            GaugeMetricFamily(
                "edgecam_camera_up", "1 while the camera source is open and delivering.", labels=cam
            ),
            GaugeMetricFamily(
                "edgecam_camera_fps", "Frames inferred per second over the last few seconds.", labels=cam
            ),
            GaugeMetricFamily(
                "edgecam_camera_last_frame_age_seconds",
                "Seconds since the last frame was captured (absent before the first frame).",
                labels=cam,
            ),
            GaugeMetricFamily(
                "edgecam_online_accuracy_ratio",
                "Top-1 accuracy over labelled frames since start (absent without labelled frames).",
                labels=cam,
            ),
            GaugeMetricFamily("edgecam_stream_subscribers", "Open prediction streams.", labels=cam),
            GaugeMetricFamily(
                "edgecam_model_memory_bytes",
                "Memory a loaded model holds: kind=weights (weights and code, from its files) and "
                "kind=workspace (process growth at load and first run beyond the weights, an estimate).",
                labels=["model", "version", "kind"],
            ),
        )

    def _fill_cameras(
        self,
        up: GaugeMetricFamily,
        fps: GaugeMetricFamily,
        age: GaugeMetricFamily,
        accuracy: GaugeMetricFamily,
        subscribers: GaugeMetricFamily,
    ) -> None:
        for name, snap in self._metrics._camera_snapshots():
            up.add_metric([name], 1.0 if snap.up else 0.0)
            fps.add_metric([name], snap.fps)
            if snap.last_frame_age_seconds is not None:
                age.add_metric([name], snap.last_frame_age_seconds)
            if snap.online_accuracy is not None:
                accuracy.add_metric([name], snap.online_accuracy)
            subscribers.add_metric([name], snap.subscribers)

    def _fill_models(self, memory: GaugeMetricFamily) -> None:
        try:
            models = list(self._metrics._models())
        except Exception:
            log.exception("model registry callback failed during scrape")
            return
        for model in models:
            try:
                memory.add_metric([model.name, model.version, "weights"], model.runtime.memory_bytes())
                memory.add_metric([model.name, model.version, "workspace"], model.workspace_bytes)
            except Exception:
                log.exception("model %s: memory_bytes() failed during scrape", model.name)
