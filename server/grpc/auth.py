"""Bearer-token authentication for every RPC except the health checks probes depend on."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc

log = logging.getLogger(__name__)

# Liveness/readiness probes (systemd, Kubernetes, load balancers) carry no credentials.
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Accepts `authorization: Bearer <token>` for any configured token; else UNAUTHENTICATED."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        if not self._tokens:
            raise ValueError("token authentication needs at least one non-empty token")

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method in OPEN_METHODS or self._authorized(details):
            return handler
        log.warning("rejected %s: missing or wrong bearer token", details.method)
        return _rejecting(handler)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, presented = str(header).partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        candidate = presented.encode()
        # Compare against every token, always: the time taken must not tell which one nearly matched.
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        return any(matches)


def _rejecting(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (authorization header)"
        )

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
