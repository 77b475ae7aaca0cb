"""Assemble a running server from settings: models, cameras, metrics endpoint, gRPC endpoint."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # grpc_health.v1.health.aio, typed
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.server.budget import MemoryBudget
from edgecam.server.errors import ModelLoadError
from edgecam.server.grpc.auth import token_interceptors
from edgecam.server.grpc.servicer import CameraServicer, InferenceServicer, handlers
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.metrics_http import start_metrics_server
from edgecam.server.pipeline import CameraPipeline, PipelineOptions
from edgecam.server.repository import ModelRepository, TrustOptions
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.service import EdgeService
from edgecam.server.settings import CameraConfig, ServerSettings, TlsConfig
from edgecam.server.shadow import ShadowChecker

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        self.service = EdgeService(self.repository, cameras, self.metrics, max_streams=settings.max_streams)
        self.budget = MemoryBudget(settings.request_memory_budget_bytes, self.metrics)
        # Inference and repository work: bounded, so a flood of requests queues instead of
        # multiplying threads; streams and health checks never wait for it (server/grpc/servicer.py).
        self._executor = futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="edgecam-rpc"
        )
        self._loop: _LoopThread | None = None
        self._interceptors: list[grpc.ServerInterceptor] = []
        self._health: HealthServicer | None = None
        self._grpc: grpc.aio.Server | None = None
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
        # Trust: signatures, child-process test loads, repository RPCs (server/repository.py).
        trust = TrustOptions(tuple(s.trusted_keys), s.repository_rpcs, s.probe_timeout_seconds)
        repository = ModelRepository(self.metrics, s.model_repository, trust)
        for config in s.models:
            model = repository.load_path(config.path, name=config.name, version=config.version)
            log.info(
                "loaded model %s v%s (%s) from %s", model.name, model.version, model.platform, config.path
            )
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
        return CameraPipeline(config.name, config.source_config(), model, self.metrics, options, shadow)

    def start(self) -> None:
        s = self.settings
        # Before anything binds: a token file without tokens stops start-up (auth fails closed).
        self._interceptors = token_interceptors(s)
        try:
            self._http = start_metrics_server(s.metrics_port, s.metrics_host, self.registry)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc.strerror or exc}; "
                "is another server using that port? (metrics_port)"
            ) from None
        self.metrics_port = self._http.server_port
        self._loop = _LoopThread()
        try:
            self._loop.call(self._bind_grpc())
        except BaseException:
            self._release()
            raise
        self.service.start()
        if s.model_repository is not None and s.repository_poll_seconds > 0:
            self.repository.watch(s.repository_poll_seconds)
        self._loop.call(self._serve())
        log.info(
            "serving gRPC on %s:%d (%s%s), metrics on http://%s:%d/metrics",
            s.grpc_host,
            self.grpc_port,
            "plaintext" if s.tls is None else ("mTLS" if s.tls.client_ca_file else "TLS"),
            ", bearer tokens" if self._interceptors else "",
            s.metrics_host,
            self.metrics_port,
        )

    async def _bind_grpc(self) -> None:
        """Build the grpc.aio server on the loop's thread and bind its port (not serving yet)."""
        s = self.settings
        server = grpc.aio.server(
            options=_channel_options(s),
            interceptors=[_SyncInterceptor(interceptor) for interceptor in self._interceptors],
        )
        services = (
            (
                "inference.GRPCInferenceService",
                InferenceServicer(
                    self.service,
                    self._executor,
                    self.budget,
                    s.max_message_bytes,
                    s.request_memory_wait_seconds,
                ),
                oip,
            ),
            ("edgecam.v1.CameraService", CameraServicer(self.service), v1),
        )
        for name, servicer, module in services:
            methods = handlers(name, servicer, module)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_SERVICE_NAMES, server)
        address = f"{s.grpc_host}:{s.grpc_port}"
        _check_free(s.grpc_host, s.grpc_port, "grpc_port")
        try:
            if s.tls is None:
                self.grpc_port = server.add_insecure_port(address)
            else:
                self.grpc_port = server.add_secure_port(address, _server_credentials(s.tls))
        except RuntimeError:  # grpc's "Failed to bind", with a C-core trace; say what and what to do
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise OSError(
                f"cannot bind gRPC to {address}: the port is in use or the address is not local; "
                "stop the other server or choose another grpc_port"
            )
        self._grpc = server

    async def _serve(self) -> None:
        assert self._grpc is not None and self._health is not None
        await self._grpc.start()
        # Per service too: probes (the fleet gate, Kubernetes) ask for a service by name.
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        """Refuse new work, end streams with a status, let in-flight calls finish, release ports."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._health is not None and self._loop is not None:
            self._loop.call(self._health.enter_graceful_shutdown())
        self.service.stop(self.settings.camera_stop_seconds)
        if self._grpc is not None and self._loop is not None:
            self._loop.call(self._grpc.stop(self.settings.shutdown_grace_seconds))
        self._release()
        log.info("server stopped")

    def _release(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _LoopThread:
    """The gRPC server's asyncio event loop, on its own thread, so start() and stop() stay plain calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edgecam-grpc", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _SyncInterceptor(grpc.aio.ServerInterceptor):
    """Runs a sync grpc.ServerInterceptor (auth.py's) in the aio server.

    The inner interceptor sees the handler a call resolved to and may swap it for one that aborts
    (a refusal). That sync handler cannot run on the loop (its context.abort is sync), so it is run
    here once against a context that records the abort, and the call gets an async handler of the
    same kind that aborts with that code and message.
    """

    def __init__(self, inner: grpc.ServerInterceptor) -> None:
        self._inner = inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        chosen = self._inner.intercept_service(lambda _details: handler, details)
        if chosen is handler or chosen is None:  # None: an unknown method, UNIMPLEMENTED
            return handler
        return _aborting_like(chosen)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _RecordingContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Abort(code, details)


def _aborting_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    behaviour: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    try:
        result = behaviour(None, _RecordingContext())
        if inspect.isgenerator(result):  # a streaming refusal aborts at its first step
            next(result, None)
    except _Abort as refusal:
        code, details = refusal.code, refusal.details
    else:
        return handler  # it does not refuse: nothing to translate

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, details)
        yield  # never reached: makes this an async generator, as streaming handlers must be

    kinds = {
        (False, False): (grpc.unary_unary_rpc_method_handler, abort),
        (False, True): (grpc.unary_stream_rpc_method_handler, abort_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, abort),
        (True, True): (grpc.stream_stream_rpc_method_handler, abort_stream),
    }
    make, function = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        function,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _check_free(host: str, port: int, setting: str) -> None:
    """Fail in one line naming the port if it is taken: gRPC's own bind failure logs a C-core line first."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(f"cannot resolve {host} for gRPC: {exc}; check grpc_host") from None
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is fine
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise OSError(
                    f"cannot bind gRPC to {host}:{port}: {exc.strerror}; stop the other server or choose "
                    f"another {setting}"
                ) from None


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
        # One server per port: with SO_REUSEPORT (gRPC's default) a second server binds the same port
        # and the kernel splits connections between the two.
        ("grpc.so_reuseport", 0),
        # A call's data is only buffered once its handler reads it (budget.py): until then at most
        # the initial HTTP/2 window. Bandwidth-delay probing would grow that window to many MiB
        # per call, and 16 unread 64 MiB requests then sat in gRPC's buffers (1.7 GB measured).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 64 * 1024),
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
