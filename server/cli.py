"""`edgecam serve`: run the camera server until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from edgecam.server import logs

if TYPE_CHECKING:  # imported when serving: settings pull in the server's metrics (prometheus_client)
    from edgecam.server.settings import CameraConfig, ModelConfig, ServerSettings

log = logging.getLogger(__name__)

READY_LINE = "edgecam server ready"


def serve(
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Artifact directory or .onnx file; NAME=PATH to rename."
    ),
    camera: list[str] = typer.Option(
        [],
        "--camera",
        "-c",
        help="NAME=SOURCE: synthetic[:fps=N], a video file, rtsp://..., http://..., /dev/videoN.",
    ),
    grpc_host: str = typer.Option(None, help="gRPC bind address [default 127.0.0.1, env EDGECAM_GRPC_HOST]."),
    grpc_port: int = typer.Option(None, help="gRPC port, 0 for any free port [default 8001]."),
    metrics_host: str = typer.Option(None, help="Prometheus /metrics bind address [default 127.0.0.1]."),
    metrics_port: int = typer.Option(
        None, help="Prometheus /metrics port, 0 for any free port [default 8002]."
    ),
    config: Path = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="YAML settings file; EDGECAM_* and flags override it.",
    ),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING, ERROR."),
    log_format: str = typer.Option("text", help="text, or json (one object per line, for log collectors)."),
) -> None:
    """Serve models over gRPC (KServe v2 + edgecam.v1) and stream camera predictions."""
    if log_format not in ("text", "json") or log_level.upper() not in logging.getLevelNamesMapping():
        typer.echo(
            f"error: --log-format {log_format!r} / --log-level {log_level!r}: use text|json and "
            "DEBUG|INFO|WARNING|ERROR",
            err=True,
        )
        raise typer.Exit(2)
    logs.configure(log_level, log_format)  # type: ignore[arg-type]
    from edgecam.server.settings import ServerSettings

    try:
        settings = ServerSettings.load(
            config,
            models=[_model_config(m) for m in model],
            cameras=[_camera_config(c) for c in camera],
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
        )
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    run(settings)


def run(settings: ServerSettings) -> None:
    from edgecam.server.app import EdgecamServer
    from edgecam.server.errors import ServerError
    from edgecam.server.sources.base import SourceError

    try:
        server = EdgecamServer(settings)
        server.start()
    except (ServerError, SourceError, OSError, ValueError) as exc:  # ValueError: e.g. an empty token file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Parsed by `edgecam demo` and the tests when they ask for port 0.
    print(
        f"{READY_LINE} grpc={settings.grpc_host}:{server.grpc_port} "
        f"metrics={settings.metrics_host}:{server.metrics_port}",
        flush=True,
    )
    stop.wait()
    log.info("stopping: finishing in-flight requests, ending streams")
    server.stop()
    # A camera thread may still be blocked in a driver read (a silent stream: daemon, left behind at
    # the stop deadline). Tearing the interpreter down under it can abort the process (SIGABRT was
    # seen), so after the orderly stop above exit without finalization, logs flushed first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _model_config(spec: str) -> ModelConfig:
    from edgecam.server.settings import ModelConfig

    name, sep, path = spec.partition("=")
    if sep and not Path(spec).exists():
        return ModelConfig(name=name, path=Path(path))
    return ModelConfig(path=Path(spec))


def _camera_config(spec: str) -> CameraConfig:
    from edgecam.server.settings import CameraConfig

    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise ValueError(
            f"--camera {spec!r}: expected NAME=SOURCE, e.g. front=synthetic or door=rtsp://host/stream"
        )
    return CameraConfig(name=name, source=source)
