"""The models a server serves, one version each, and hot reload from a repository directory.

Layout: `<root>/<model>/<version>/` holds an artifact directory (manifest.json) or a `model.onnx`.
A load verifies the new version completely before it replaces the old one; requests already
running keep the old runtime until they finish (they hold a reference), so a reload never fails
a request. A version that fails verification is refused and remembered, and the old keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecam.compiler.artifact import MANIFEST_NAME, ArtifactError
from edgecam.server.errors import InvalidArgument, ModelLoadError, NotFound
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE (on disk, not serving), FAILED (refused: see reason)
    reason: str = ""


class ModelRepository:
    def __init__(self, metrics: EdgecamMetrics, root: Path | None = None) -> None:
        self.root = root
        self._metrics = metrics
        self._serving: dict[str, LoadedModel] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._load_lock = threading.Lock()  # one load at a time; reads never wait for it
        self._listeners: list[Callable[[LoadedModel], None]] = []
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> LoadedModel:
        model = self._serving.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; this server serves {sorted(self._serving)}")
        if version and version != model.version:
            raise NotFound(
                f"model {name!r} has no version {version!r} loaded; serving version {model.version!r}"
            )
        return model

    def serving(self) -> list[LoadedModel]:
        return list(self._serving.values())

    def on_swap(self, listener: Callable[[LoadedModel], None]) -> None:
        """Called with every newly served model (cameras follow their model this way)."""
        self._listeners.append(listener)

    # -- loading ------------------------------------------------------------------------------
    def add(self, model: LoadedModel) -> None:
        """Serve a model loaded elsewhere (a --model path given on the command line)."""
        if model.name in self._serving:
            raise ModelLoadError(f"two models are named {model.name!r}; give one --model NAME=PATH")
        self._serving[model.name] = model

    def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Load `version` (default: the newest on disk), verify it, then swap it in atomically."""
        version = version or self._newest_version(name)
        path = self._version_path(name, version)
        with self._load_lock:
            try:
                model = load_model(path, name=name, version=version)
            except (ArtifactError, ModelLoadError, OSError, ValueError) as exc:
                check = exc.check if isinstance(exc, ArtifactError) else type(exc).__name__
                self._failed[(name, version)] = str(exc)
                self._metrics.model_load_failures.labels(model=name, reason=check).inc()
                log.error(
                    "refused %s version %s from %s: %s; still serving %s",
                    name,
                    version,
                    path,
                    exc,
                    self._describe_serving(name),
                )
                raise ModelLoadError(f"model {name!r} version {version!r} refused: {exc}") from exc
            old = self._serving.get(name)
            self._serving[name] = model  # the swap: one dict assignment, atomic for readers
            self._failed.pop((name, version), None)
        self._metrics.model_loads.labels(model=name).inc()
        log.info("serving %s version %s (was %s)", name, version, old.version if old else "none")
        for listener in self._listeners:
            listener(model)
        return model

    def unload(self, name: str) -> None:
        with self._load_lock:
            if self._serving.pop(name, None) is None:
                raise NotFound(f"model {name!r} is not loaded; loaded: {sorted(self._serving)}")
        log.info("unloaded %s", name)

    def load_all(self) -> None:
        """At start-up: the newest version of every model in the repository; failures are logged."""
        for name in self._model_names():
            try:
                self.load(name)
            except (ModelLoadError, NotFound) as exc:
                log.error("%s", exc)

    # -- index and watch ----------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[ModelEntry]:
        entries = []
        names = sorted(set(self._model_names()) | set(self._serving))
        for name in names:
            serving = self._serving.get(name)
            versions = self._versions(name) or ([serving.version] if serving else [])
            for version in versions:
                if serving is not None and serving.version == version:
                    entries.append(ModelEntry(name, version, "READY"))
                elif (name, version) in self._failed:
                    entries.append(ModelEntry(name, version, "FAILED", self._failed[(name, version)]))
                else:
                    entries.append(ModelEntry(name, version, "UNAVAILABLE"))
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    def poll(self) -> None:
        """Load any model whose newest version on disk is newer than the one served and not refused."""
        for name in self._model_names():
            versions = self._versions(name)
            if not versions:
                continue  # a model folder being created: its first version has not arrived yet
            newest, serving = versions[-1], self._serving.get(name)
            if (serving is None or serving.version != newest) and (name, newest) not in self._failed:
                # A refusal is logged and counted by load(); the old version keeps serving.
                with contextlib.suppress(ModelLoadError):
                    self.load(name, newest)

    def watch(self, interval_s: float) -> None:
        """Poll the repository directory every `interval_s` seconds until stop()."""

        def loop() -> None:
            while not self._watch_stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # never let the watcher die silently
                    log.exception("model repository poll failed")

        self._watcher = threading.Thread(target=loop, name="model-repository-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    # -- the directory ------------------------------------------------------------------------
    def _model_names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _versions(self, name: str) -> list[str]:
        if self.root is None or not (self.root / name).is_dir():
            return []
        found = [p.name for p in (self.root / name).iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(found, key=int)

    def _newest_version(self, name: str) -> str:
        versions = self._versions(name)
        if not versions:
            raise NotFound(
                f"no versions of {name!r} in the model repository {self.root} (expected {name}/<N>/)"
            )
        return versions[-1]

    def _version_path(self, name: str, version: str) -> Path:
        if self.root is None:
            raise InvalidArgument("this server has no model repository (set model_repository)")
        if not version.isdigit():
            raise InvalidArgument(f"version must be a number, got {version!r}")
        path = self.root / name / version
        if not path.is_dir():
            raise NotFound(f"{path} does not exist; versions of {name!r}: {self._versions(name)}")
        return path if (path / MANIFEST_NAME).exists() else path / "model.onnx"

    def _describe_serving(self, name: str) -> str:
        model = self._serving.get(name)
        return f"version {model.version}" if model else "nothing"
