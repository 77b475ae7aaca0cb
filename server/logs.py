"""Log set-up for the server process: plain text for people, JSON lines for log collectors.

With JSON logs, everything written to the process's stderr becomes a JSON line too. OpenCV and
FFmpeg write their messages ("[tcp @ 0x...] Connection refused", "moov atom not found") straight to
file descriptor 2 from C, past Python's logging, and a collector expecting one object per line
chokes on them. So fd 2 is turned into a pipe; a thread reads it and logs each line through the
logger `edgecam.native` (WARNING, "stream": "stderr"), and the log handler writes to the real
stderr. Child processes inherit the pipe, so their output is wrapped as well.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else was passed in `extra=` and belongs in the JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

native = logging.getLogger("edgecam.native")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrCapture:
    """fd 2 → a pipe read by a thread into `native`; `stream` is the real stderr, for the handler."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.stream: TextIO = os.fdopen(
            os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
        )
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="stderr-log")
        self._thread.start()
        atexit.register(self.close)

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    native.warning(line, extra={"stream": "stderr"})

    def close(self) -> None:
        """Put the real stderr back on fd 2 (closing the pipe) and let the reader log what is left."""
        sys.stderr.flush()
        os.dup2(self.stream.fileno(), 2)
        self._thread.join(timeout=1.0)


_capture: _StderrCapture | None = None


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    global _capture
    if fmt == "json":
        if _capture is None:
            _capture = _StderrCapture()
        handler = logging.StreamHandler(_capture.stream)
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
