"""The capture side of a camera: open a source, read it, reopen it when it fails or goes quiet.

A source fails loudly (open or read raises, the stream ends) or quietly: a stream that stays
connected but stops sending. The quiet failure is caught by frame age: no frame for
`max_frame_age_s` since the last one (or since the open) means "stalled", whether reads keep
returning None or one read is still blocked inside a driver. `check_stalled` is that watchdog; the
capture thread calls it after every read and the pipeline's inference thread calls it while it
waits for frames, so detection does not depend on how long a single read blocks.

The watchdog never closes the source from outside: releasing a cv2.VideoCapture while another
thread is inside its read() crashes the process in FFmpeg (tried: SIGSEGV). It marks the camera
down and counts the error; the capture thread reopens the source as soon as its read returns, and
the source bounds that wait itself (`FrameSource.limit_read_time`: OpenCV streams cap their FFmpeg
read timeout at the frame-age limit). A failed source is reopened with capped exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.sources.base import Frame, FrameSource

log = logging.getLogger(__name__)


class CaptureOptions(BaseModel):
    backoff_initial_s: float = Field(default=0.5, gt=0)  # first wait before reopening a failed source
    backoff_max_s: float = Field(default=10.0, gt=0)  # the wait doubles up to this
    stall_reads: int = Field(default=3, ge=1)  # consecutive empty reads that count as a stalled source
    # No frame for this long (since the last one, or since the open) counts as a stalled source,
    # however long a single read blocks. Set it above the slowest camera's frame interval.
    max_frame_age_s: float = Field(default=5.0, gt=0)


class SourceRunner:
    """Runs one FrameSource on the calling thread (`run`) and hands every frame to `deliver`."""

    def __init__(
        self,
        camera: str,
        source: FrameSource,
        metrics: EdgecamMetrics,
        options: CaptureOptions,
        deliver: Callable[[Frame], None],
    ) -> None:
        self.camera = camera
        self.source = source
        self._metrics = metrics
        self._options = options
        self._deliver = deliver
        self._lock = threading.Lock()  # guards the two fields below; the watchdog runs on other threads
        self._progress_at: float | None = None  # monotonic time of the last frame or the open; None: closed
        self._stalled = False  # this connection was declared stalled (counted once) and will be reopened
        source.limit_read_time(options.max_frame_age_s)

    @property
    def up(self) -> bool:
        """Open, and not declared stalled."""
        with self._lock:
            return self._progress_at is not None and not self._stalled

    def run(self, stop: threading.Event) -> None:
        """Open, read, reopen with backoff, until `stop` is set."""
        backoff = self._options.backoff_initial_s
        attempt = 0
        while not stop.is_set():
            if attempt:
                self._metrics.reconnects.labels(camera=self.camera).inc()
            attempt += 1
            delivered = self._run_source(stop)
            if stop.is_set():
                break
            if delivered:  # it worked for a while: come back quickly, as after a first failure
                backoff = self._options.backoff_initial_s
            log.warning("camera %s: reopening %s in %.2f s", self.camera, self.source.describe(), backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, self._options.backoff_max_s)

    def check_stalled(self) -> bool:
        """The watchdog: True once the open source has gone `max_frame_age_s` without a frame."""
        with self._lock:
            if self._progress_at is None or self._stalled:
                return self._stalled
            age = time.monotonic() - self._progress_at
            if age <= self._options.max_frame_age_s:
                return False
        self._declare_stalled(
            f"no frame from {self.source.describe()} for {age:.1f} s "
            f"(frame-age limit {self._options.max_frame_age_s:g} s)"
        )
        return True

    # -- capture thread -------------------------------------------------------------------------
    def _run_source(self, stop: threading.Event) -> bool:
        """Open the source and read it until it fails or we stop; True if it gave any frame."""
        try:
            self.source.open()
        except Exception as exc:  # SourceError, or whatever a driver raises: both mean "retry"
            self._failed("open_failed", f"cannot open {self.source.describe()}: {exc}")
            return False
        with self._lock:
            self._progress_at, self._stalled = time.monotonic(), False
        log.info("camera %s: %s is open", self.camera, self.source.describe())
        try:
            return self._read_until_failure(stop)
        finally:
            with self._lock:
                self._progress_at = None
            self.source.close()

    def _read_until_failure(self, stop: threading.Event) -> bool:
        delivered, misses = False, 0
        while not stop.is_set():
            try:
                frame = self.source.read()
            except Exception as exc:
                self._failed("read_failed", f"reading {self.source.describe()} failed: {exc}")
                break
            # Also after a frame: if the watchdog gave up on this connection while read() blocked,
            # reopen anyway (an OpenCV stream whose read timed out is dead; others may burst stale frames).
            if self.check_stalled():
                break
            if frame is None:
                misses += 1
                if misses >= self._options.stall_reads:
                    self._declare_stalled(
                        f"no frame from {self.source.describe()} in {misses} reads "
                        "(stalled, disconnected or ended)"
                    )
                    break
                continue
            with self._lock:
                self._progress_at = time.monotonic()
            delivered, misses = True, 0
            self._deliver(frame)
        return delivered

    def _declare_stalled(self, message: str) -> None:
        with self._lock:
            if self._stalled:  # the other thread got there first; count each stall once
                return
            self._stalled = True
        self._failed("stalled", message)

    def _failed(self, reason: str, message: str) -> None:
        self._metrics.camera_errors.labels(camera=self.camera, reason=reason).inc()
        log.warning("camera %s: %s", self.camera, message)
