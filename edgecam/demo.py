"""`edgecam demo`: the whole path once, on the bundled model, with the numbers a user cares about.

compile (cached) → `edgecam serve` in a child process with a synthetic camera → stream predictions
through the client → fps, latency percentiles, online accuracy → SIGTERM and a clean exit.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecam.client.client import EdgecamClient, Prediction
from edgecam.server.launcher import launch

console = Console(stderr=True)


@dataclass
class DemoResult:
    predictions: int
    seconds: float
    latency_ms: dict[str, tuple[float, float]]  # stage -> (p50, p99)
    accuracy: float
    labelled: int
    dropped: float
    rss_bytes: float


def cached_artifact(workdir: Path) -> Path:
    """Compile the bundled model for this host once; reuse it while it still verifies."""
    from edgecam.compiler import tuning
    from edgecam.compiler.artifact import ArtifactError, load_artifact, sha256_file
    from edgecam.compiler.build import compile_model
    from edgecam.compiler.targets import create_target, host_target_name, x86
    from edgecam.models import fashion_cnn

    onnx_path = fashion_cnn.onnx_path()
    target = host_target_name()
    # A portable CPU level on x86, so the committed tuning database applies on any AVX2 machine.
    options = x86.portable_options() if target == "x86_64" else {}
    sha = sha256_file(onnx_path)
    database = tuning.find_database(sha, create_target(target, **options).tvm_target())
    tuned = f"tuned{tuning.records_in(database)}" if database else "untuned"
    key = f"{fashion_cnn.MODEL_NAME}-{target}-{options.get('mcpu', 'host')}-{tuned}-{sha[:12]}"
    out = workdir / key
    try:
        load_artifact(out)
        console.print(f"[green]✓[/] using cached artifact {out}")
        return out
    except ArtifactError as exc:
        if out.exists():
            console.print(f"cached artifact unusable ({exc}); recompiling")
    how = f"with the tuning database {database}" if database else "untuned (no tuning database for this CPU)"
    console.print(f"compiling {onnx_path.name} for {target} with TVM {how} (once; cached in {workdir})")
    compile_model(onnx_path, target, out, target_options=options)
    return out


def stream(grpc_addr: str, frames: int) -> tuple[list[Prediction], float]:
    predictions: list[Prediction] = []
    with EdgecamClient(grpc_addr) as client:
        client.wait_ready()
        start = time.perf_counter()
        with console.status(f"streaming {frames} predictions from camera 'demo'"):
            for p in client.stream("demo"):
                predictions.append(p)
                if len(predictions) >= frames:
                    break
        elapsed = time.perf_counter() - start
    return predictions, elapsed


def summarize(predictions: list[Prediction], seconds: float, metrics_text: str) -> DemoResult:
    latency = {}
    for stage in ("capture", "preprocess", "infer", "postprocess", "total"):
        values = [1000 * p.latency[stage] for p in predictions if stage in p.latency]
        if values:
            latency[stage] = (float(np.percentile(values, 50)), float(np.percentile(values, 99)))
    labelled = [p for p in predictions if p.label is not None]
    correct = sum(1 for p in labelled if p.top_k and p.top_k[0].index == p.label)
    return DemoResult(
        predictions=len(predictions),
        seconds=seconds,
        latency_ms=latency,
        accuracy=correct / len(labelled) if labelled else float("nan"),
        labelled=len(labelled),
        dropped=_metric_sum(metrics_text, "edgecam_frames_dropped_total"),
        rss_bytes=_metric_sum(metrics_text, "process_resident_memory_bytes"),
    )


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name:
                total += float(value)
    return total


def report(result: DemoResult) -> None:
    table = Table(title="edgecam demo: fashion_cnn on a synthetic camera", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("predictions streamed", str(result.predictions))
    table.add_row("stream rate", f"{result.predictions / result.seconds:.1f} fps")
    for stage, (p50, p99) in result.latency_ms.items():
        table.add_row(f"{stage} latency p50 / p99", f"{p50:.2f} / {p99:.2f} ms")
    table.add_row(
        "online top-1 accuracy", f"{100 * result.accuracy:.1f}% of {result.labelled} labelled frames"
    )
    table.add_row("frames dropped (newest-frame policy)", f"{result.dropped:.0f}")
    table.add_row("server RSS", f"{result.rss_bytes / 2**20:.0f} MiB")
    Console().print(table)


def run_demo(frames: int = 300, workdir: str | None = None, camera_fps: float = 200.0) -> int:
    cache = (
        Path(workdir)
        if workdir
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecam"
    )
    artifact = cached_artifact(cache)
    server = launch(
        ["--model", str(artifact), "--camera", f"demo=synthetic:fps={camera_fps}", "--log-level", "WARNING"]
    )
    try:
        console.print(f"[green]✓[/] server up: gRPC {server.grpc_address}, metrics {server.metrics_url}")
        predictions, seconds = stream(server.grpc_address, frames)
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics_text = response.read().decode()
    finally:
        code = server.stop()
    report(summarize(predictions, seconds, metrics_text))
    if code != 0:
        console.print(f"[red]server exited with code {code} after SIGTERM[/]")
        return 1
    console.print("[green]✓[/] server shut down cleanly")
    return 0
