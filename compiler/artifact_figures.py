"""What a compressed model costs once compiled: the artifact's bytes on disk and its latency.

The report's rows measure ONNX models: weights at their coded size, TVM latency of an untuned build
with the weights baked in. A camera runs the artifact instead: the library `compile` built (tuned
schedules replayed when a database exists) and, where weights are coded, a library that takes them as
arguments plus the coded file, decoded at load. The two can be far apart: coded weights that are 10×
smaller than fp32 sit beside a library of compiled code, and a library whose weights are arguments
cannot prepack them at build time. So `compress` measures the artifact itself too (Report.artifact).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from edgecam import weight_codec
from edgecam.compiler.artifact import Artifact, ArtifactError, check_host_can_run
from edgecam.compiler.evaluate import Latency, MeasureOptions, RuntimeProcess
from edgecam.datatypes import to_numpy

REFERENCE_FILE = "reference.onnx"  # compiler/build.py's REFERENCE_NAME: shadow mode's, not run


class ArtifactFigures(BaseModel):
    """The compiled artifact: what it takes on disk and how long one batch-1 call of it takes."""

    # Bytes on disk of every file `compile` wrote (library, coded weights, reference.onnx), manifest aside.
    files: dict[str, int]
    # What a camera loads to run the model: the library plus its coded weights (reference.onnx is
    # only read by shadow mode).
    run_bytes: int
    # The final model's weight bytes (coded ones at their coded size), for comparison with run_bytes.
    weight_bytes: int
    latency: Latency | None = None
    latency_skipped: str | None = None  # why there is no latency
    tuned_tasks: int = 0  # build tasks whose schedules came from a tuning database (0: untuned)
    tuning_tasks: int = 0
    threads: int = Field(default=2, ge=1)


def measure_artifact(artifact: Artifact, weight_bytes: int, options: MeasureOptions) -> ArtifactFigures:
    """Sizes of `artifact`'s files and its latency, run as a camera runs it (coded weights decoded)."""
    manifest = artifact.manifest
    files = {name: (artifact.path / name).stat().st_size for name in manifest.files}
    run = [manifest.library] + ([manifest.coded_weights.file] if manifest.coded_weights else [])
    latency: Latency | str
    try:
        check_host_can_run(manifest.target)
        latency = _time(artifact, options)
    except ArtifactError as exc:
        latency = f"this host cannot run the artifact: {exc}"
    measurements = manifest.measurements
    return ArtifactFigures(
        files=files,
        run_bytes=sum(files[name] for name in run),
        weight_bytes=weight_bytes,
        latency=latency if isinstance(latency, Latency) else None,
        latency_skipped=latency if isinstance(latency, str) else None,
        tuned_tasks=int(measurements.get("tuned_tasks", 0)),
        tuning_tasks=int(measurements.get("tuning_tasks", 0)),
        threads=options.threads,
    )


def _time(artifact: Artifact, options: MeasureOptions) -> Latency | str:
    """The library in a TVM-runtime-only process (evaluate.RuntimeProcess) on seeded random inputs of
    the declared shapes: latency does not depend on the values for the CNNs edgecam compiles."""
    manifest = artifact.manifest
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(spec.shape).astype(to_numpy(spec.datatype)) for spec in manifest.inputs]
    coded = manifest.coded_weights
    scratch = tempfile.TemporaryDirectory(prefix="edgecam-artifact-")
    with scratch as tmp, RuntimeProcess(options.threads) as rt:
        np.savez(Path(tmp) / "inputs.npz", *inputs)
        weights = None
        if coded is not None:
            blobs = weight_codec.read_bundle(artifact.path / coded.file)
            weights = Path(tmp) / "weights.npz"
            np.savez(weights, *(weight_codec.decode(blobs[name]) for name in coded.params))
        transform = coded.transform if coded is not None else None
        return rt.time(artifact.library_path, Path(tmp) / "inputs.npz", options, weights, transform)
