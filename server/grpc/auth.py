"""Bearer-token authentication for every RPC except the health checks probes depend on.

It fails closed: a token file that holds no token stops start-up instead of turning auth off. The
file is re-read when it changes (checked at most every RECHECK_S), so a revoked token stops working
without a restart; a re-read that fails (unreadable, or empty mid-write) keeps the last good set.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from edgecam.server.settings import ServerSettings

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


RECHECK_S = 1.0


def read_token_file(path: Path) -> list[str]:
    """One token per line; blank lines and '#' comments are skipped. No token at all is an error."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"auth_tokens_file: cannot read {path}: {exc}") from exc
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ValueError(
            f"auth_tokens_file {path} holds no token (only blank or '#' lines); add one token per line "
            "or unset auth_tokens_file to run without authentication"
        )
    return tokens


class TokenSet:
    """The accepted tokens: a fixed one (auth_token) and a file's, re-read when the file changes."""

    def __init__(self, fixed: Iterable[str] = (), file: Path | None = None) -> None:
        self._fixed = [t.encode() for t in fixed if t]
        self._file = file
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._stamp = self._file_stamp()
        self._from_file = [t.encode() for t in read_token_file(file)] if file is not None else []
        if not self._fixed and not self._from_file:
            raise ValueError("token authentication needs at least one non-empty token")

    def current(self) -> list[bytes]:
        if self._file is not None and time.monotonic() - self._checked_at >= RECHECK_S:
            with self._lock:  # one thread re-reads; the others use the set they see
                if time.monotonic() - self._checked_at >= RECHECK_S:
                    self._checked_at = time.monotonic()
                    self._reload()
        return self._fixed + self._from_file

    def _reload(self) -> None:
        assert self._file is not None
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a broken file is reported once, and read again when it changes
        try:
            tokens = read_token_file(self._file)
        except ValueError as exc:  # keep serving the last good set rather than locking everyone out
            log.error("%s; keeping the %d tokens read before", exc, len(self._from_file))
            return
        self._from_file = [t.encode() for t in tokens]
        log.info("auth_tokens_file %s re-read: %d tokens", self._file, len(tokens))

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file is rewritten or replaced (inode: an atomic rename)."""
        try:
            info = self._file.stat() if self._file is not None else None
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns) if info else None


def token_interceptors(settings: ServerSettings) -> list[grpc.ServerInterceptor]:
    """[] when no token is configured; else the interceptor (a token file without tokens: ValueError)."""
    fixed = [settings.auth_token.get_secret_value()] if settings.auth_token else []
    if not fixed and settings.auth_tokens_file is None:
        return []
    return [TokenAuthInterceptor(TokenSet(fixed, settings.auth_tokens_file))]


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Accepts `authorization: Bearer <token>` for any configured token; else UNAUTHENTICATED."""

    def __init__(self, tokens: TokenSet | Iterable[str]) -> None:
        self._tokens = tokens if isinstance(tokens, TokenSet) else TokenSet(tokens)

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
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens.current()]
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
