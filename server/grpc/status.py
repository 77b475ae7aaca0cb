"""The one place where server errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from edgecam.server.errors import ServerError, Status

log = logging.getLogger(__name__)

_CODES = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
}

F = TypeVar("F", bound=Callable[..., Any])


def grpc_code(error: ServerError) -> grpc.StatusCode:
    return _CODES[error.status]


def one_line(text: str) -> str:
    """Status details and stream error messages are one line: log collectors and CLIs print them so."""
    return " ".join(text.split())


def error_message(exc: Exception) -> str:
    """What a caller is told about `exc`; anything but a ServerError is an internal error of ours."""
    if isinstance(exc, ServerError):
        return one_line(str(exc))
    return one_line(f"internal error: {type(exc).__name__}: {exc}")


def maps_errors(method: F) -> F:
    """Turn ServerError into the matching status; anything else into INTERNAL, logged with a trace."""

    def abort(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, ServerError):
            context.abort(grpc_code(exc), error_message(exc))
        log.exception("unexpected error in %s", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, error_message(exc))

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                abort(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return unary  # type: ignore[return-value]
