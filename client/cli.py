"""`edgecam watch | infer | status`: look at a running server from a terminal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from edgecam.client.client import EdgecamClient

# Shared by every command that connects (option objects are only read, so sharing is safe).
TOKEN = typer.Option(
    None, "--token", envvar="EDGECAM_TOKEN", help="Bearer token, if the server requires one."
)
TLS_CA = typer.Option(None, "--tls-ca", help="CA certificate (PEM) to verify the server; enables TLS.")
TLS_CERT = typer.Option(None, "--tls-cert", help="Client certificate (PEM), for servers that require mTLS.")
TLS_KEY = typer.Option(None, "--tls-key", help="Client private key (PEM) for --tls-cert.")


@contextmanager
def connect(
    address: str, token: str | None, ca: Path | None, cert: Path | None, key: Path | None
) -> Iterator[EdgecamClient]:
    """A client for the command; a failed call ends the command with its one-line error, exit 1."""
    # Imported here: gRPC is in the client and server extras, and `edgecam` must start without it.
    from edgecam.client.client import ClientTls, EdgecamClient, EdgecamClientError

    tls = ClientTls(ca, cert, key) if (ca or cert) else None
    try:
        with EdgecamClient(address, token=token, tls=tls) as client:
            yield client
    except EdgecamClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def watch(
    address: str = typer.Argument(..., help="HOST:PORT of the server's gRPC endpoint."),
    camera: str = typer.Argument(..., help="Camera name (see `edgecam status`)."),
    count: int = typer.Option(0, help="Stop after this many predictions; 0 runs until Ctrl-C."),
    top_k: int = typer.Option(3, help="How many labels to show per frame."),
    token: str = TOKEN,
    tls_ca: Path = TLS_CA,
    tls_cert: Path = TLS_CERT,
    tls_key: Path = TLS_KEY,
) -> None:
    """Print a camera's live predictions."""
    try:
        with connect(address, token, tls_ca, tls_cert, tls_key) as client:
            for n, p in enumerate(client.stream(camera, top_k=top_k), start=1):
                best = ", ".join(f"{r.label} {r.score:.2f}" for r in p.top_k)
                truth = f"  truth={p.label}" if p.label is not None else ""
                total_ms = 1000 * p.latency.get("total", 0.0)
                typer.echo(f"{p.camera} #{p.frame_index:<6} {total_ms:6.1f} ms  {best}{truth}")
                if count and n >= count:
                    break
    except KeyboardInterrupt:
        pass


def infer(
    address: str = typer.Argument(..., help="HOST:PORT of the server's gRPC endpoint."),
    model: str = typer.Argument(..., help="Model name."),
    image: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Image file (any format OpenCV reads)."
    ),
    top_k: int = typer.Option(3, help="How many labels to show."),
    token: str = TOKEN,
    tls_ca: Path = TLS_CA,
    tls_cert: Path = TLS_CERT,
    tls_key: Path = TLS_KEY,
) -> None:
    """Classify one image with a model on the server."""
    import cv2

    frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if frame is None:
        typer.echo(f"error: OpenCV cannot read {image} as an image", err=True)
        raise typer.Exit(2)
    with connect(address, token, tls_ca, tls_cert, tls_key) as client:
        start = time.perf_counter()
        ranked = client.classify(model, frame, k=top_k)
        elapsed = time.perf_counter() - start
    for r in ranked:
        typer.echo(f"{r.score:7.4f}  {r.label} ({r.index})")
    typer.echo(f"round trip {1000 * elapsed:.1f} ms", err=True)


def status(
    address: str = typer.Argument(..., help="HOST:PORT of the server's gRPC endpoint."),
    token: str = TOKEN,
    tls_ca: Path = TLS_CA,
    tls_cert: Path = TLS_CERT,
    tls_key: Path = TLS_KEY,
) -> None:
    """Show the server's readiness and its cameras."""
    with connect(address, token, tls_ca, tls_cert, tls_key) as client:
        ready = client.ready()
        cameras = client.cameras()
    typer.echo(f"{address}: {'ready' if ready else 'NOT ready'}")
    for c in cameras:
        age = f"{c.last_frame_age_seconds:.2f}s" if c.last_frame_age_seconds is not None else "never"
        typer.echo(
            f"  {c.name:<16} {'up  ' if c.up else 'DOWN'} {c.fps:6.1f} fps  frames={c.frames_inferred} "
            f"dropped={c.frames_dropped} last={age}  model={c.model}  source={c.source}"
        )
