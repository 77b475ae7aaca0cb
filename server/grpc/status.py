"""The one place where server errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from edgecam.server.errors import ServerError, Status

log = logging.getLogger(__name__)

_CODES = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Status.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
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


def _status(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServerError):
        return grpc_code(exc), error_message(exc)
    log.error("unexpected error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, error_message(exc)


def maps_errors(method: F) -> F:
    """Turn ServerError into the matching status; anything else into INTERNAL, logged with a trace.

    Works on sync servicer methods and on grpc.aio ones (coroutines, async generators), whose
    context.abort is itself a coroutine.
    """
    name = method.__name__

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                await context.abort(*_status(name, exc))

        return async_stream  # type: ignore[return-value]

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except Exception as exc:
                await context.abort(*_status(name, exc))

        return async_unary  # type: ignore[return-value]

    def abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
        context.abort(*_status(name, exc))
        raise AssertionError("context.abort returned")  # it raises; this tells the type checker

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
