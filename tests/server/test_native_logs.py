"""With --log-format json every stderr line of `edgecam serve` is a JSON object, FFmpeg's included.

Broken sources make OpenCV and FFmpeg print from C straight to fd 2 (a file that is not a video, a
truncated AVI with bytes that are not UTF-8); those lines must reach the log
collector as records of the logger `edgecam.native`, not as stray text between JSON lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgecam.models import fashion_cnn
from edgecam.server.cli import READY_LINE


def test_native_stderr_lines_become_json_records(tmp_path: Path) -> None:
    # An MP4 whose moov box never comes: an ftyp box then media data. Random bytes would not do,
    # FFmpeg probes content before the extension and sometimes takes them for another format.
    garbage = tmp_path / "garbage.mp4"
    ftyp = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    garbage.write_bytes(ftyp + (20_008).to_bytes(4, "big") + b"mdat" + os.urandom(20_000))
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 20)
    stderr_file = tmp_path / "stderr"
    with stderr_file.open("wb") as stderr:
        serving = subprocess.Popen(
            [sys.executable, "-m", "edgecam.server", "--model", str(fashion_cnn.onnx_path()),
             "--camera", f"a={garbage}", "--camera", f"b={truncated}", "--camera", "c=http://127.0.0.1:9/x.mjpg",
             "--grpc-port", "0", "--metrics-port", "0", "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        assert serving.stdout is not None
        ready = serving.stdout.readline()
        try:
            assert READY_LINE in ready, stderr_file.read_text(errors="replace")
            # Sources are reopened with backoff; wait until each source has complained at least once.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and serving.poll() is None:
                seen = stderr_file.read_bytes()
                if b"does not accept connections" in seen and b"moov atom not found" in seen:
                    break
                time.sleep(0.2)
        finally:
            serving.send_signal(signal.SIGTERM)
            assert serving.wait(timeout=30) == 0
    lines = stderr_file.read_bytes().decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    native = [r for r in records if r["logger"] == "edgecam.native"]
    # The unreachable stream never reaches FFmpeg (server/sources/preflight.py): edgecam says why.
    assert any(
        "does not accept connections" in r["message"]
        for r in records
        if r["logger"].startswith("edgecam.server")
    )
    assert any("moov atom not found" in r["message"] for r in native), lines
    assert all(r["stream"] == "stderr" and r["level"] == "WARNING" for r in native)
    assert any(r["message"] == "server stopped" for r in records)  # the log outlives the capture's end
