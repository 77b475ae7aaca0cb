"""Start `edgecam serve` as a child process and find its ports: used by `edgecam demo` and the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

_READY = re.compile(r"edgecam server ready grpc=(\S+) metrics=(\S+)")


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    grpc_address: str
    metrics_address: str
    log: deque[str] = field(default_factory=lambda: deque(maxlen=400))

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}/metrics"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd would; returns the exit code (killed: -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


def launch(serve_args: list[str], timeout: float = 60.0, env: dict[str, str] | None = None) -> RunningServer:
    """Run `python -m edgecam.server ARGS --grpc-port 0 --metrics-port 0` and wait for its ready line."""
    # -P: not the working directory first on sys.path (an `edgecam/` source folder would shadow the package).
    command = [sys.executable, "-P", "-m", "edgecam.server", *serve_args]
    command += ["--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",  # native libraries (FFmpeg) print whatever bytes a broken file holds
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    log: deque[str] = deque(maxlen=400)
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def pump() -> None:  # keep draining output so the child never blocks on a full pipe
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip())
            match = _READY.search(line)
            if match and not found:
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True, name="edgecam-server-log").start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server not ready in {timeout} s; last output:\n" + "\n".join(log))
    if not found:
        process.wait()
        raise RuntimeError(
            f"server exited with code {process.returncode} before becoming ready:\n" + "\n".join(log)
        )
    return RunningServer(process, found[0].group(1), found[0].group(2), log)
