"""Reliability examination: 16 concurrent 64 MiB ModelInfer requests against the memory budget.

    .venv/bin/python -m bench.reliability.memory [--concurrent 16] [--memory-seconds 3]

Starts `edgecam serve` (a child process, loopback) with the bundled Fashion-MNIST model on a 20 fps
synthetic camera and a one-op model taking a 64 MiB vector (edgecam.client.load.vector_model),
under the default request memory budget (512 MiB); `--concurrent` clients, each on its own
connection, send 64 MiB requests for `--memory-seconds`. It records the statuses, the server's RSS
before, at its peak (VmHWM, reset before the flood) and after, and the camera's rate during the
flood. `run(args)` returns the figures and their `targets` for bench/bench_reliability.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from . import run_alone, target

DONE_WHEN = "16 concurrent 64 MiB requests"
BUDGET = 512 * 1024 * 1024  # the default request_memory_budget_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--memory-seconds", type=float, default=3.0, help="how long the clients send")
    parser.add_argument("--memory-camera-fps", type=float, default=20.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgecam.client.load import VECTOR_64_MIB, examine_memory, vector_model
    from edgecam.models import fashion_cnn
    from edgecam.server.launcher import launch

    fps = getattr(args, "memory_camera_fps", 20.0)
    with tempfile.TemporaryDirectory(prefix="edgecam-memory-") as workdir:
        vsum = vector_model(Path(workdir) / "vsum.onnx", VECTOR_64_MIB)
        config = Path(workdir) / "edgecam.yaml"
        config.write_text(
            f"models: [{{path: '{fashion_cnn.onnx_path()}', name: fashion_cnn}}, {{path: '{vsum}'}}]\n"
            f"cameras: [{{name: cam, source: 'synthetic:fps={fps:g}', model: fashion_cnn}}]\n"
            f"request_memory_budget_bytes: {BUDGET}\n"
        )
        server = launch(["--config", str(config), "--log-level", "WARNING"])
        try:
            found: dict[str, Any] = examine_memory(
                server.grpc_address,
                server.metrics_url,
                server.process.pid,
                "cam",
                "vsum",
                "x",
                VECTOR_64_MIB,
                concurrent=getattr(args, "concurrent", 16),
                seconds=getattr(args, "memory_seconds", 3.0),
            )
        finally:
            found_exit = server.stop()
    statuses = found["statuses"]
    found["exit_code"] = found_exit
    found["camera_fps_configured"] = fps
    found["targets"] = [
        target(
            f"{DONE_WHEN}: server RSS peak over its RSS before",
            found["rss_peak_growth_bytes"] / 2**20,
            "<",
            BUDGET / 2**20,
            "MiB",
        ),
        target(
            f"{DONE_WHEN}: requests over the budget refused",
            statuses.get("RESOURCE_EXHAUSTED", 0),
            ">",
            0,
            "requests",
        ),
        target(
            f"{DONE_WHEN}: requests ending otherwise than OK or RESOURCE_EXHAUSTED",
            sum(n for code, n in statuses.items() if code not in ("OK", "RESOURCE_EXHAUSTED")),
            "==",
            0,
            "requests",
        ),
        target(
            f"{DONE_WHEN}: camera rate during the flood", found["camera_fps_during"] / fps, ">=", 0.9, "ratio"
        ),
    ]
    return found


if __name__ == "__main__":
    import sys

    run_alone(sys.modules[__name__])
