"""Reliability examination: 200 open prediction streams on a 10 fps camera, half of them never read.

    .venv/bin/python -m bench.reliability.streams [--streams 200] [--readers 100] [--stream-seconds 3]

Starts `edgecam serve` (a child process, loopback, ports chosen by the kernel) with the bundled
Fashion-MNIST model on a synthetic camera, opens the streams with real gRPC clients
(edgecam.client.load) and measures ModelInfer latency idle and under the streams, health Check
latency, each reader's share of the frames, the camera's rate, the server's RSS and the drops the
silent streams caused. Bounded: about `--stream-seconds` plus start-up; the server is stopped after.
`run(args)` returns the figures and their `targets` (issue 18's Done-when line) for
bench/bench_reliability.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import run_alone, target

DONE_WHEN = "200 open prediction streams on a 10 fps camera, half never reading"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--readers", type=int, default=100, help="streams that read; the others never do")
    parser.add_argument("--stream-seconds", type=float, default=3.0, help="measuring window")
    parser.add_argument("--stream-fps", type=float, default=10.0, help="the synthetic camera's rate")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgecam.client.load import examine_streams, rss_bytes
    from edgecam.models import fashion_cnn
    from edgecam.server.launcher import launch

    fps = getattr(args, "stream_fps", 10.0)
    model = f"fashion_cnn={fashion_cnn.onnx_path()}"
    server = launch(["--model", model, "--camera", f"cam=synthetic:fps={fps:g}", "--log-level", "WARNING"])
    try:
        rss_before = rss_bytes(server.process.pid)
        found: dict[str, Any] = examine_streams(
            server.grpc_address,
            server.metrics_url,
            "cam",
            "fashion_cnn",
            streams=getattr(args, "streams", 200),
            readers=getattr(args, "readers", 100),
            seconds=getattr(args, "stream_seconds", 3.0),
        )
        found["rss_before_bytes"] = rss_before
        found["rss_after_bytes"] = rss_bytes(server.process.pid)
    finally:
        found_exit = server.stop()
    found["exit_code"] = found_exit
    found["camera_fps_configured"] = fps
    found["targets"] = [
        target(
            f"{DONE_WHEN}: ModelInfer p99 over its idle p99",
            found["infer_p99_streams_ms"] / found["infer_p99_idle_ms"],
            "<=",
            2.0,
            "ratio",
        ),
        target(f"{DONE_WHEN}: slowest health Check", found["health_max_ms"], "<", 100.0, "ms"),
        target(
            f"{DONE_WHEN}: worst reading subscriber's share of the frames",
            found["worst_reader_share"],
            ">=",
            0.9,
            "ratio",
        ),
        target(
            f"{DONE_WHEN}: server RSS growth",
            (found["rss_after_bytes"] - rss_before) / 2**20,
            "<",
            64.0,
            "MiB",
        ),
        target(
            f"{DONE_WHEN}: predictions dropped for silent streams, counted",
            found["stream_predictions_dropped"],
            ">",
            0.0,
            "predictions",
        ),
    ]
    return found


if __name__ == "__main__":
    import sys

    run_alone(sys.modules[__name__])
