"""A network camera that does not answer is refused before OpenCV opens it, so it cannot hold the
lock OpenCV's FFmpeg backend opens every capture under (server/sources/preflight.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecam.server.sources.base import SourceError
from edgecam.server.sources.opencv import OpenCVSource, OpenCVSourceConfig
from edgecam.server.sources.preflight import check_answers


@pytest.fixture
def tcp_server() -> Iterator[Callable[[bytes | None], int]]:
    """A loopback server answering each connection with `reply` (None: accept and stay silent)."""
    listeners: list[socket.socket] = []
    held: list[socket.socket] = []

    def start(reply: bytes | None) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                held.append(connection)
                if reply is not None:
                    connection.recv(4096)
                    connection.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for s in listeners + held:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_silent_rtsp_server_is_refused_without_holding_up_other_cameras(
    tcp_server: Callable[[bytes | None], int], tmp_path: Path
) -> None:
    video = tmp_path / "ok.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    silent = OpenCVSource(
        OpenCVSourceConfig(uri=f"rtsp://127.0.0.1:{tcp_server(None)}/live", open_timeout_s=4)
    )
    failure: list[BaseException] = []

    def open_silent() -> None:
        try:
            silent.open()
        except SourceError as exc:
            failure.append(exc)

    opening = threading.Thread(target=open_silent)
    started = time.monotonic()
    opening.start()
    time.sleep(0.3)  # the silent camera is being opened now
    healthy = OpenCVSource(OpenCVSourceConfig(uri=str(video)))
    before = time.monotonic()
    healthy.open()
    healthy_open_s = time.monotonic() - before
    healthy.close()
    opening.join()
    # Handed to OpenCV, the silent camera held the lock for its whole timeout: the file waited 3.7 s.
    assert healthy_open_s < 1.5, healthy_open_s
    assert failure and "sent nothing within 4 s" in str(failure[0])
    assert 3.5 < time.monotonic() - started < 10


def test_a_server_that_answers_is_let_through(tcp_server: Callable[[bytes | None], int]) -> None:
    rtsp = tcp_server(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")  # asks for credentials: an answer
    check_answers(f"rtsp://127.0.0.1:{rtsp}/live", "cam", 2)
    web = tcp_server(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace\r\n\r\n")
    check_answers(f"http://127.0.0.1:{web}/video.mjpg?res=hd", "cam", 2)


def test_refusals_name_the_reason_and_never_the_password(tcp_server: Callable[[bytes | None], int]) -> None:
    ssh = tcp_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    shown = "rtsp://***@127.0.0.1/live"
    with pytest.raises(SourceError, match="not as an RTSP server") as wrong:
        check_answers(f"rtsp://admin:secret@127.0.0.1:{ssh}/live", shown, 2)
    with pytest.raises(SourceError, match="does not accept connections") as closed:
        check_answers(f"http://admin:secret@127.0.0.1:{_free_port()}/x.mjpg", shown, 2)
    for caught in (wrong, closed):
        assert "secret" not in str(caught.value) and shown in str(caught.value)


def test_other_schemes_are_left_to_ffmpeg() -> None:
    for uri in ("udp://239.0.0.1:1234", "rtmp://127.0.0.1:1/live", "rtsps://127.0.0.1:abc/x"):
        check_answers(uri, uri, 0.5)  # no check, no error: FFmpeg knows these, edgecam does not
