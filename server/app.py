"""Assemble a running server from settings: models, cameras, metrics endpoint, gRPC endpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.errors import ModelLoadError
from edgecam.server.grpc.auth import token_interceptors
from edgecam.server.grpc.servicer import CameraServicer, InferenceServicer
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.pipeline import CameraPipeline, PipelineOptions
from edgecam.server.repository import ModelRepository, TrustOptions
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.service import EdgeService
from edgecam.server.settings import CameraConfig, ServerSettings, TlsConfig
from edgecam.server.shadow import ShadowChecker
from edgecam.server.sources import parse_source

log = logging.getLogger(__name__)


class EdgecamServer:
    """One camera server. `start()` binds both ports; `stop()` ends streams and releases them."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = EdgecamMetrics(self.registry)
        self.repository = self._load_models()
        cameras = {c.name: self._camera(c) for c in settings.cameras}
        self.repository.on_swap(lambda model: _follow(model, cameras.values()))
        self.metrics.watch_models(self.repository.serving)
        self.service = EdgeService(self.repository, cameras, self.metrics)
        self._health = health.HealthServicer()
        self._grpc: grpc.Server | None = None
        self._http: Any = None
        self._stopped = threading.Event()
        self.grpc_port = 0
        self.metrics_port = 0

    def _load_models(self) -> ModelRepository:
        s = self.settings
        if not s.models and s.model_repository is None:
            raise ModelLoadError(
                "no model given; pass --model PATH (an artifact directory or an .onnx file) "
                "or set model_repository"
            )
        if s.model_repository is not None and not s.model_repository.is_dir():
            raise ModelLoadError(f"model_repository {s.model_repository} is not a directory")
        # -- trust (srvtrust): signatures, child-process test loads, repository RPCs ------------------
        trust = TrustOptions(tuple(s.trusted_keys), s.repository_rpcs, s.probe_timeout_seconds)
        repository = ModelRepository(self.metrics, s.model_repository, trust)
        for config in s.models:
            model = repository.load_path(config.path, name=config.name, version=config.version)
            log.info(
                "loaded model %s v%s (%s) from %s", model.name, model.version, model.platform, config.path
            )
        # -- end trust ---------------------------------------------------------------------------------
        repository.load_all()
        if not repository.serving():
            raise ModelLoadError(f"no model in {s.model_repository} could be loaded; see the errors above")
        return repository

    def _camera(self, config: CameraConfig) -> CameraPipeline:
        serving = {m.name: m for m in self.repository.serving()}
        if config.model is None:
            if len(serving) != 1:
                raise ModelLoadError(f"camera {config.name!r} must name its model (one of {sorted(serving)})")
            model = next(iter(serving.values()))
        elif config.model in serving:
            model = serving[config.model]
        else:
            raise ModelLoadError(
                f"camera {config.name!r} uses unknown model {config.model!r}; have {sorted(serving)}"
            )
        options = PipelineOptions(
            max_fps=config.max_fps, max_frame_age_s=config.max_frame_age_s, backoff_max_s=config.backoff_max_s
        )
        shadow = ShadowChecker(config.name, model, config.shadow, self.metrics) if config.shadow else None
        return CameraPipeline(config.name, parse_source(config.source), model, self.metrics, options, shadow)

    def start(self) -> None:
        s = self.settings
        interceptors = token_interceptors(s)  # trust (srvtrust): an empty token file stops start-up
        self._http, _ = start_http_server(s.metrics_port, addr=s.metrics_host, registry=self.registry)
        self.metrics_port = self._http.server_port
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers),
            options=_channel_options(s),
            interceptors=interceptors,
        )
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.service), server)
        v1_grpc.add_CameraServiceServicer_to_server(CameraServicer(self.service), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_SERVICE_NAMES, server)
        address = f"{s.grpc_host}:{s.grpc_port}"
        if s.tls is None:
            self.grpc_port = server.add_insecure_port(address)
        else:
            self.grpc_port = server.add_secure_port(address, _server_credentials(s.tls))
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {address} (in use?)")
        self.service.start()
        if s.model_repository is not None and s.repository_poll_seconds > 0:
            self.repository.watch(s.repository_poll_seconds)
        server.start()
        self._grpc = server
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving gRPC on %s:%d (%s%s), metrics on http://%s:%d/metrics",
            s.grpc_host,
            self.grpc_port,
            "plaintext" if s.tls is None else ("mTLS" if s.tls.client_ca_file else "TLS"),
            ", bearer tokens" if interceptors else "",
            s.metrics_host,
            self.metrics_port,
        )

    def stop(self) -> None:
        """Refuse new work, end streams with a status, let in-flight calls finish, release ports."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self.service.stop()
        if self._grpc is not None:
            self._grpc.stop(self.settings.shutdown_grace_seconds).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("server stopped")


def _follow(model: LoadedModel, cameras: Iterable[CameraPipeline]) -> None:
    """A hot-reloaded model replaces the old version in every camera that used it."""
    for camera in cameras:
        if camera.model.name == model.name:
            camera.set_model(model)


_SERVICE_NAMES = (
    "inference.GRPCInferenceService",
    "edgecam.v1.CameraService",
    "grpc.health.v1.Health",
    reflection.SERVICE_NAME,
)


def _channel_options(s: ServerSettings) -> list[tuple[str, int]]:
    keepalive_ms = int(s.keepalive_seconds * 1000)
    return [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping as often as we do without being disconnected for "too many pings".
        ("grpc.http2.min_ping_interval_without_data_ms", min(keepalive_ms, 10_000)),
    ]


def _server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    try:
        key, cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise OSError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
