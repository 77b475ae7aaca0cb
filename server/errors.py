"""Server errors. Each carries the status it maps to; server/grpc/status.py is the one place that maps."""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"


class ServerError(Exception):
    status = Status.INTERNAL


class InvalidArgument(ServerError):
    """The request is malformed: the message names the field, what came and what was expected."""

    status = Status.INVALID_ARGUMENT


class NotFound(ServerError):
    status = Status.NOT_FOUND


class Unavailable(ServerError):
    """The server is shutting down or the thing asked for is not ready yet."""

    status = Status.UNAVAILABLE


class FailedPrecondition(ServerError):
    """The request is valid but the server's state does not allow it (e.g. unloading a model in use)."""

    status = Status.FAILED_PRECONDITION


class ResourceExhausted(ServerError):
    """An operator's limit is reached (open streams, memory for requests in flight): retry later."""

    status = Status.RESOURCE_EXHAUSTED


class ModelLoadError(ServerError):
    """A model could not be loaded; the message names the check that failed."""

    status = Status.FAILED_PRECONDITION


class PermissionDenied(ServerError):
    """The call is switched off by the server's configuration (e.g. repository_rpcs: false)."""

    status = Status.PERMISSION_DENIED
