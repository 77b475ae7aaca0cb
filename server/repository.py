"""The models a server serves, one version each, and hot reload from a repository directory.

Layout: `<root>/<model>/<version>/` holds an artifact directory (manifest.json) or a `model.onnx`;
model names are plain names and versions decimal numbers, and nothing may point out of `<root>`.
A load verifies the new version completely before it replaces the old one: its signature when the
server trusts keys (edgecam/signing.py), then a test load and run in a child process
(server/probe.py), then the load here. Requests already running keep the old runtime until they
finish (they hold a reference), so a reload never fails a request. A version that fails is refused
and remembered with the state of its folder, and the old keeps serving; the watcher checks it again
only when its folder changes (a `cp -r` still in progress), never in a loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecam.compiler.artifact import MANIFEST_NAME, ArtifactError
from edgecam.server.errors import InvalidArgument, ModelLoadError, NotFound, PermissionDenied
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.probe import DEFAULT_TIMEOUT_S, probe
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel
from edgecam.signing import SignatureError, load_public_keys, verify_manifest

log = logging.getLogger(__name__)

# A model name is one directory name: no separators, not hidden (so never '.' or '..').
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() accepts '²')
_MAX_FOLDER_ENTRIES = 10_000  # a version folder is a handful of files; bound the walk anyway
_STAGING_HINT = "publish versions with a staging rename: cp -r new .3.tmp && mv .3.tmp 3"


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"model name {name!r} is not a plain name: use letters, digits, '_', '-' and '.', "
            "not starting with '.', no path separators or '..'"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise InvalidArgument(f"version must be a decimal number, got {version!r}")
    return version


@dataclass(frozen=True)
class TrustOptions:
    """What the server loads and who may ask it to (settings: trusted_keys, repository_rpcs, probe)."""

    trusted_keys: tuple[Path, ...] = ()
    repository_rpcs: bool = True
    probe_timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class _Refusal:
    reason: str
    folder_state: tuple[tuple[str, int, int], ...]  # the folder as it was when refused


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE (on disk, not serving), FAILED (refused: see reason)
    reason: str = ""


class ModelRepository:
    def __init__(
        self, metrics: EdgecamMetrics, root: Path | None = None, trust: TrustOptions | None = None
    ) -> None:
        self.root = root
        self._metrics = metrics
        self._trust = trust or TrustOptions()
        try:
            self._keys = load_public_keys(list(self._trust.trusted_keys))
        except SignatureError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._serving: dict[str, LoadedModel] = {}
        self._failed: dict[tuple[str, str], _Refusal] = {}
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

    def load_path(self, path: Path, name: str | None = None, version: str = "1") -> LoadedModel:
        """A --model path from the command line: the same checks as a repository version, then add()."""
        try:
            model = self._checked_load(Path(path), name, version)
        except (ArtifactError, ModelLoadError, SignatureError, OSError, ValueError) as exc:
            self._metrics.model_load_failures.labels(model=name or Path(path).name, reason=_check(exc)).inc()
            raise ModelLoadError(f"cannot load model {path}: {exc}") from exc
        self.add(model)
        return model

    def load(self, name: str, version: str | None = None) -> LoadedModel:
        """RepositoryModelLoad: `version` (default: the newest on disk), verified, then swapped in."""
        self._check_rpcs("RepositoryModelLoad")
        check_model_name(name)
        return self._load(name, check_version(version) if version else self._newest_version(name))

    def _load(self, name: str, version: str) -> LoadedModel:
        folder = self._version_dir(name, version)
        state = _folder_state(folder)  # before reading: a change while we read shows at the next poll
        with self._load_lock:
            try:
                model = self._checked_load(self._model_path(folder), name, version)
            except (ArtifactError, ModelLoadError, SignatureError, OSError, ValueError) as exc:
                self._failed[(name, version)] = _Refusal(str(exc), state)
                self._metrics.model_load_failures.labels(model=name, reason=_check(exc)).inc()
                log.error(
                    "refused %s version %s from %s: %s; still serving %s",
                    name,
                    version,
                    folder,
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

    def _checked_load(self, path: Path, name: str | None, version: str) -> LoadedModel:
        """Signature (when keys are trusted), a test run in a child process, then the load here."""
        signed = None
        if self._keys:
            if path.is_dir():
                _key, manifest = verify_manifest(path / MANIFEST_NAME, self._keys)
                signed = hashlib.sha256(manifest).hexdigest()
            else:
                raise SignatureError(
                    f"{path} is a plain model file, which cannot be signed; keys are trusted"
                )
        probed = probe(path, self._trust.probe_timeout_s)
        if signed is not None and probed != signed:
            raise ModelLoadError(f"{path / MANIFEST_NAME} changed while it was checked; try again")
        return load_model(path, name=name, version=version)

    def unload(self, name: str) -> None:
        self._check_rpcs("RepositoryModelUnload")
        with self._load_lock:
            if self._serving.pop(name, None) is None:
                raise NotFound(f"model {name!r} is not loaded; loaded: {sorted(self._serving)}")
        log.info("unloaded %s", name)

    def load_all(self) -> None:
        """At start-up: the newest good version of every model; a bad newer one is logged and skipped."""
        for name in self._model_names():
            versions = self._versions(name)
            for version in reversed(versions):
                try:
                    self._load(name, version)
                except ModelLoadError as exc:
                    log.error("%s", exc)
                    continue
                if version != versions[-1]:
                    self._metrics.model_fallbacks.labels(model=name).inc()
                    log.warning(
                        "serving %s version %s: newer versions %s were refused (see above)",
                        name,
                        version,
                        versions[versions.index(version) + 1 :],
                    )
                break

    def _check_rpcs(self, rpc: str) -> None:
        if not self._trust.repository_rpcs:
            raise PermissionDenied(f"{rpc} is disabled on this server (repository_rpcs: false)")

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
                    entries.append(ModelEntry(name, version, "FAILED", self._failed[(name, version)].reason))
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
            if serving is not None and serving.version == newest:
                continue
            refused = self._failed.get((name, newest))
            # A refusal is logged and counted by _load(); the old version keeps serving. NotFound: the
            # folder went away since it was listed.
            with contextlib.suppress(ModelLoadError, NotFound):
                folder = self._version_dir(name, newest)
                if refused is not None and refused.folder_state == _folder_state(folder):
                    continue  # refused as it is now; a folder still being written changes and is retried
                self._load(name, newest)

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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _MODEL_NAME.fullmatch(p.name))

    def _versions(self, name: str) -> list[str]:
        if self.root is None or not (self.root / name).is_dir():
            return []
        found = [p.name for p in (self.root / name).iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(found, key=int)

    def _newest_version(self, name: str) -> str:
        versions = self._versions(name)
        if not versions:
            raise NotFound(f"no versions of {name!r} in the model repository (expected {name}/<N>/)")
        return versions[-1]

    def _version_dir(self, name: str, version: str) -> Path:
        if self.root is None:
            raise InvalidArgument("this server has no model repository (set model_repository)")
        folder = self.root / check_model_name(name) / check_version(version)
        if not folder.is_dir():
            raise NotFound(f"model {name!r} has no version {version!r}; versions: {self._versions(name)}")
        return folder

    def _model_path(self, folder: Path) -> Path:
        """The artifact (or model.onnx) in a version folder, refusing anything that leads out of root."""
        assert self.root is not None  # _version_dir checked it
        root = self.root.resolve()
        for entry in _walk(folder):
            if not entry.resolve().is_relative_to(root):
                raise ArtifactError(
                    "outside_repository",
                    f"{entry.relative_to(self.root)} points outside the model repository; refused",
                )
        if (folder / MANIFEST_NAME).is_file():
            return folder
        if (folder / "model.onnx").is_file():
            return folder / "model.onnx"
        raise ArtifactError(
            "incomplete",
            f"version folder {folder.relative_to(self.root)} has no {MANIFEST_NAME} or model.onnx yet "
            f"(still being copied? it is checked again when it changes; {_STAGING_HINT})",
        )

    def _describe_serving(self, name: str) -> str:
        model = self._serving.get(name)
        return f"version {model.version}" if model else "nothing"


def _check(exc: Exception) -> str:
    """The metric's reason label: the failed check's name (sha256, signature, signal_SIGSEGV, ...)."""
    return str(getattr(exc, "check", type(exc).__name__))


def _walk(folder: Path) -> list[Path]:
    """The folder and what it holds, without following links (each link is checked by its target)."""
    found = [folder]
    for top, dirs, files in os.walk(folder):
        found += [Path(top, n) for n in dirs + files]
        if len(found) > _MAX_FOLDER_ENTRIES:
            raise ModelLoadError(
                f"{folder} holds more than {_MAX_FOLDER_ENTRIES} entries; not a model version"
            )
    return found


def _folder_state(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of everything in a version folder: equal states mean nothing was written."""
    state = []
    with contextlib.suppress(OSError, ArtifactError):  # a folder vanishing mid-walk: a changed state
        for entry in _walk(folder):
            info = entry.lstat()
            state.append((str(entry.relative_to(folder)), info.st_size, info.st_mtime_ns))
    return tuple(state)
