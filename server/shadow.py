"""Shadow mode: a sampled fraction of frames also runs on the fp32 reference model, off the hot path.

Top-1 agreement and score drift between the served (compressed/compiled) model and its reference
tell an operator that the model is failing on their scene without any labels. The camera thread
only samples, copies and enqueues without blocking; one daemon worker runs the reference, so a
slow reference costs skipped samples (counted), never camera frames.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from edgecam.server.errors import ModelLoadError
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.runtime.base import LoadedModel, Runtime

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference.onnx"  # the original model: compile_model and compress put it in artifacts
_POLL_S = 0.2  # how long the worker waits for a sample before it looks at the stop flag again


class ShadowConfig(BaseModel):
    fraction: float = Field(default=0.1, ge=0.0, le=1.0)  # share of inferred frames also run on the reference
    queue: int = Field(default=8, ge=1)  # samples waiting for the reference; when full, a sample is skipped
    reference: Path | None = None  # None: <artifact dir>/reference.onnx (a plain .onnx model: no shadow)
    seed: int = 0  # of the sampler, so a run is reproducible


@dataclass(frozen=True)
class _Target:
    """A served model and its reference, swapped together so a queued sample meets its own reference."""

    model: LoadedModel
    reference: Runtime | None  # None: no reference, shadow off for this model
    output: str  # the reference output that holds the scores


@dataclass(frozen=True)
class _Sample:
    target: _Target
    inputs: dict[str, np.ndarray]
    primary: np.ndarray


def artifact_dir(model: LoadedModel) -> Path | None:
    """The directory `model` was loaded from when it is an artifact, else None."""
    if model.manifest is None or model.path is None or not model.path.is_dir():
        return None
    return model.path


def reference_path(model: LoadedModel, configured: Path | None) -> Path | None:
    """The configured reference, else the artifact's reference.onnx when it has one."""
    if configured is not None:
        return Path(configured)
    directory = artifact_dir(model)
    if directory is None or not (directory / REFERENCE_NAME).is_file():
        return None
    return directory / REFERENCE_NAME


def softmax(scores: np.ndarray) -> np.ndarray:
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    shifted = np.exp(flat - flat.max())
    return shifted / shifted.sum()


def compare(primary: np.ndarray, reference: np.ndarray, apply_softmax: bool) -> tuple[bool, float]:
    """(top-1 equal, max |primary − reference|) of two batch-of-one score vectors."""
    if apply_softmax:
        a, b = softmax(primary), softmax(reference)
    else:
        a = np.asarray(primary, dtype=np.float64).reshape(-1)
        b = np.asarray(reference, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"primary scores have shape {a.shape}, the reference's {b.shape}")
    return int(a.argmax()) == int(b.argmax()), float(np.abs(a - b).max())


class ShadowChecker:
    """Samples a camera's inferences onto the reference model; `start()`, `offer()`, `stop()`."""

    def __init__(
        self, camera: str, model: LoadedModel, config: ShadowConfig, metrics: EdgecamMetrics
    ) -> None:
        """Raises ModelLoadError when an explicitly configured reference cannot be loaded."""
        self.camera = camera
        self.config = config
        self._metrics = metrics
        self._queue: queue.Queue[_Sample | None] = queue.Queue(config.queue)
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()  # guards the sampler and the per-model counts
        self._counts: dict[str, tuple[int, int]] = {}  # model name → (samples, agreements)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = self._load(model, strict=config.reference is not None)

    # -- public ---------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether the current model has a reference to compare with."""
        return self._target.reference is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        while not self._queue.empty():  # samples (and the wake-up) left by an earlier stop()
            self._queue.get_nowait()
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name=f"edgecam-shadow-{self.camera}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (queued samples are dropped); returns within about `timeout` seconds."""
        self._stop.set()
        # Wake the worker now rather than at its next poll; a full queue means it is busy and
        # sees the flag after the current sample.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # a reference run still going: it is a daemon, let it finish alone
                log.warning("camera %s: shadow worker did not stop within %.1f s", self.camera, timeout)

    def set_model(self, model: LoadedModel) -> None:
        """Follow a hot reload: the reference of the new model (its artifact's, or the configured one)."""
        self._target = self._load(model, strict=False)

    def offer(self, inputs: dict[str, np.ndarray], primary_scores: np.ndarray) -> bool:
        """Maybe queue this inference for the reference; never blocks. True if it was taken."""
        target = self._target
        if target.reference is None or self._thread is None or self._stop.is_set():
            return False
        with self._lock:
            if self._rng.random() >= self.config.fraction:
                return False
        # Copies: the caller may reuse its buffers once we return.
        sample = _Sample(
            target, {k: np.array(v, copy=True) for k, v in inputs.items()}, np.array(primary_scores)
        )
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self._metrics.shadow_skipped.labels(camera=self.camera, model=target.model.name).inc()
            return False
        return True

    # -- worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                sample = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if sample is None or self._stop.is_set():
                continue
            try:
                self._check(sample)
            except Exception:
                if not failing:  # one traceback per run of failures, not one per sample
                    log.exception(
                        "camera %s: shadow check of model %s failed", self.camera, sample.target.model.name
                    )
                failing = True
                continue
            failing = False

    def _check(self, sample: _Sample) -> None:
        target = sample.target
        assert target.reference is not None  # offer() queues only samples that have one
        reference = target.reference.run(sample.inputs)[target.output]
        agree, drift = compare(sample.primary, reference, target.model.postprocessing.apply_softmax)
        name = target.model.name
        with self._lock:
            samples, agreements = self._counts.get(name, (0, 0))
            samples, agreements = samples + 1, agreements + agree
            self._counts[name] = (samples, agreements)
        m, labels = self._metrics, {"camera": self.camera, "model": name}
        m.shadow_samples.labels(**labels).inc()
        if agree:
            m.shadow_agreements.labels(**labels).inc()
        m.shadow_drift.labels(**labels).observe(drift)
        m.shadow_agreement_ratio.labels(**labels).set(agreements / samples)

    # -- helpers --------------------------------------------------------------------------------
    def _load(self, model: LoadedModel, strict: bool) -> _Target:
        """Load `model`'s reference; a failure raises when `strict`, else it turns shadow off."""
        path = reference_path(model, self.config.reference)
        if path is None:
            log.info("camera %s: model %s has no reference model; shadow mode off", self.camera, model.name)
            return _Target(model, None, "")
        try:
            reference, output = _open_reference(path, model)
        except ModelLoadError as exc:
            if strict:
                raise
            log.warning("camera %s: %s; shadow mode off for model %s", self.camera, exc, model.name)
            return _Target(model, None, "")
        self._metrics.watch_shadow(self.camera, model.name)
        log.info("camera %s: shadowing model %s with %s", self.camera, model.name, path)
        return _Target(model, reference, output)


def _open_reference(path: Path, model: LoadedModel) -> tuple[Runtime, str]:
    """An OnnxRuntime for `path` that takes `model`'s inputs, and the output holding its scores."""
    from edgecam.server.runtime.onnxruntime import OnnxRuntime  # lazy: imports onnxruntime

    # One thread: the reference is a background check and must not steal the cameras' cores.
    runtime = OnnxRuntime(path, intra_op_threads=1)
    missing = {s.name for s in model.inputs} - {s.name for s in runtime.inputs}
    if missing:
        raise ModelLoadError(
            f"reference {path} lacks the model's inputs {sorted(missing)}; "
            f"it has {[s.name for s in runtime.inputs]}"
        )
    names = [s.name for s in runtime.outputs]
    wanted = model.postprocessing.output
    return runtime, wanted if wanted in names else names[0]
