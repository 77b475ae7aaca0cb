"""Real cameras through cv2.VideoCapture: video files, rtsp://, http(s):// MJPEG and V4L2 devices."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from edgecam.server.sources.base import Frame, FrameSource, SourceConfig, SourceError, register_source
from edgecam.server.sources.preflight import check_answers

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DEVICE = re.compile(r"^(?:/dev/video)?(\d+)$")
_CREDENTIALS = re.compile(r"://[^/@]*@")


class OpenCVSourceConfig(SourceConfig):
    kind: Literal["opencv"] = "opencv"
    uri: str  # a file path, rtsp://..., http(s)://..., /dev/videoN or a device index N
    loop: bool = True  # files: start over at the end
    open_timeout_s: float = Field(default=10.0, gt=0)  # streams: give up connecting after this
    # streams: a read returns None after this (capped at the pipeline's frame-age limit). FFmpeg
    # honours it for RTSP and HTTP MJPEG; after it fires the capture is dead and must be reopened.
    read_timeout_s: float = Field(default=5.0, gt=0)
    realtime: bool = True  # files: pace at their native fps, like a camera would deliver them

    bare_fallback: ClassVar[bool] = True  # any URL: FFmpeg knows more schemes than edgecam could list
    bare_forms: ClassVar[str] = (
        "rtsp://..., http(s)://..., /dev/videoN, a device index N, or a video file path"
    )

    @classmethod
    def from_bare(cls, spec: str) -> OpenCVSourceConfig | None:
        """URLs and devices by their form; a path only when the file exists (else the error says so)."""
        if source_type(spec) != "file" or Path(spec).is_file():
            return cls(uri=spec)
        return None


def redact(uri: str) -> str:
    """The URI without user:password, fit for logs and status."""
    return _CREDENTIALS.sub("://***@", uri)


def source_type(uri: str) -> Literal["stream", "device", "file"]:
    if _URL.match(uri):
        return "stream"
    if _DEVICE.match(uri):
        return "device"
    return "file"


@register_source(OpenCVSourceConfig)
class OpenCVSource(FrameSource):
    def __init__(self, config: OpenCVSourceConfig) -> None:
        self.config = config
        self._type = source_type(config.uri)
        self._cap: Any = None
        self._frame_interval = 0.0  # files in realtime mode: seconds between frames
        self._next_at = 0.0
        self._read_limit_s = config.read_timeout_s

    def limit_read_time(self, seconds: float) -> None:
        self._read_limit_s = min(self.config.read_timeout_s, seconds)

    def open(self) -> None:
        import cv2  # lazy: importing the server must not load OpenCV

        self.close()
        if self._type == "stream":
            cap = self._open_stream(cv2)
        elif self._type == "device":
            cap = self._open_device(cv2)
        else:
            cap = self._open_file(cv2)
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        realtime = self._type == "file" and self.config.realtime and 0 < fps < 1000
        self._frame_interval = 1.0 / fps if realtime else 0.0
        self._next_at = time.monotonic()

    def _open_stream(self, cv2: Any) -> Any:
        # OpenCV opens under one process-wide lock: a camera that does not answer must not get it.
        check_answers(self.config.uri, redact(self.config.uri), self.config.open_timeout_s)
        # Without these FFmpeg waits ~30 s on an unreachable host and forever on a silent one.
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.config.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self._read_limit_s * 1000),
        ]
        cap = cv2.VideoCapture(self.config.uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open stream {redact(self.config.uri)} within {self.config.open_timeout_s:g} s: "
                "check that the host is reachable, the port and path are right, the credentials are "
                "accepted, and that it serves a codec FFmpeg decodes (H.264, H.265, MJPEG)"
            )
        return cap

    def _open_device(self, cv2: Any) -> Any:
        index = int(self.config.uri.removeprefix("/dev/video"))
        node = Path(f"/dev/video{index}")
        if not node.exists():
            raise SourceError(
                f"camera device {node} does not exist: is the camera plugged in and its driver loaded "
                "(uvcvideo for USB cameras)? `ls /dev/video*` lists the devices there are"
            )
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open camera device {node}: check that this user may read it (group 'video'), "
                "that no other process holds it, and that it is a capture node (`v4l2-ctl --list-devices`)"
            )
        return cap

    def _open_file(self, cv2: Any) -> Any:
        path = Path(self.config.uri)
        if not path.is_file():
            raise SourceError(f"video file {path} does not exist")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot decode video file {path}: unsupported container or codec "
                "(OpenCV's FFmpeg reads e.g. MJPG/avi, mp4v and H.264/mp4, VP8/VP9/webm)"
            )
        return cap

    def read(self) -> Frame | None:
        if self._cap is None:
            return None
        if self._frame_interval:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_at = max(self._next_at + self._frame_interval, time.monotonic() - self._frame_interval)
        ok, image = self._cap.read()
        if not ok and self._type == "file" and self.config.loop:
            ok, image = self._rewind()
        if not ok or image is None:
            return None
        return Frame(image=image, captured_at=time.time())

    def _rewind(self) -> tuple[bool, Any]:
        """The first frame again, at the end of a looping file: seek back, or reopen it."""
        import cv2

        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, image = self._cap.read()
        if ok:
            return ok, image
        # A raw stream without an index (a .mjpeg of concatenated JPEGs, raw .h264) accepts the seek
        # and then reads nothing; reopening starts it over, and is not a camera failure.
        self._cap.release()
        self._cap = self._open_file(cv2)
        return self._cap.read()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        return f"opencv {self._type} {redact(self.config.uri)}"
