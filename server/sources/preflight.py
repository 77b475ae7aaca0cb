"""Ask a network camera whether it answers before OpenCV opens it.

OpenCV's FFmpeg backend opens every capture of the process under one global mutex: while a camera
that accepts the connection and never answers holds it for the whole open timeout, no other camera
can open, nor reconnect after a fault (measured: a local video file took 4.5 s to open beside a
silent RTSP server with a 5 s timeout). So a stream is first asked, on a socket of our own and
without that lock, for the start of an answer: the status line of an RTSP OPTIONS or an HTTP GET.
Only a camera that answers is handed to OpenCV; the others fail at once with the reason.

TLS schemes (rtsps, https) get the connection only: their handshake is FFmpeg's to make, with the
certificate checks the operator configured.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from edgecam.server.sources.base import SourceError

_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_STATUS_LINE_LIMIT = 256  # bytes read while waiting for the first line of the answer


def check_answers(uri: str, shown: str, timeout_s: float) -> None:
    """SourceError (naming `shown`, the URI without credentials) unless the camera at `uri` accepts
    a connection and starts an answer within `timeout_s`; schemes other than RTSP and HTTP pass."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is no number: FFmpeg's error is as good as ours
        return
    deadline = time.monotonic() + timeout_s
    where = f"{parts.hostname}:{port}"
    try:
        connection = socket.create_connection((parts.hostname, port), timeout=timeout_s)
    except OSError as exc:
        raise SourceError(
            f"cannot open stream {shown}: {where} does not accept connections ({exc.strerror or exc}); "
            "check that the camera is powered and reachable and the port is right"
        ) from None
    with connection:
        if scheme in ("rtsps", "https"):
            return
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if scheme == "rtsp":
            plain = f"rtsp://{parts.hostname}:{port}{path}"
            request = f"OPTIONS {plain} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: edgecam\r\n\r\n"
            expected = b"RTSP/"
        else:
            request = f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\nUser-Agent: edgecam\r\n\r\n"
            expected = b"HTTP/"
        line = _first_line(connection, request.encode(), deadline)
    if line is None:
        raise SourceError(
            f"cannot open stream {shown}: {where} accepted the connection but sent nothing within "
            f"{timeout_s:g} s (a {scheme.upper()} server that hangs); not opened, so it cannot hold "
            "up the other cameras"
        )
    if not line.startswith(expected):
        raise SourceError(
            f"cannot open stream {shown}: {where} answered, but not as an {scheme.upper()} server "
            f"({line[:60]!r}); check the port and the scheme"
        )


def _first_line(connection: socket.socket, request: bytes, deadline: float) -> bytes | None:
    """The first bytes of the answer to `request` (up to a line), or None when none came in time."""
    received = b""
    try:
        connection.sendall(request)
        while b"\n" not in received and len(received) < _STATUS_LINE_LIMIT:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            connection.settimeout(remaining)
            chunk = connection.recv(_STATUS_LINE_LIMIT - len(received))
            if not chunk:
                break
            received += chunk
    except OSError:  # reset or timed out: judged on what arrived
        pass
    return received or None
