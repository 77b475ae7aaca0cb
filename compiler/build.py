"""`compile_model`: ONNX → Relax → target build → verified artifact. The one compile path."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecam.compiler import verify
from edgecam.compiler.artifact import (
    Artifact,
    Manifest,
    SourceModel,
    Verification,
    sha256_file,
    write_artifact,
)
from edgecam.compiler.frontends.onnx import load_onnx, to_relax
from edgecam.compiler.targets import create_target

log = logging.getLogger(__name__)

STEPS = ("import", "build", "verify", "write")
DEFAULT_TOLERANCE = 1e-4


def compile_model(
    model_path: Path,
    target: str,
    out_dir: Path,
    target_options: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 8,
    on_step: Callable[[str], None] = lambda step: None,
) -> Artifact:
    """Compile an ONNX model for `target` and write a verified artifact to `out_dir`.

    `on_step` is called with each of STEPS as it starts (the CLI draws progress from it). Raises
    CompilerError subclasses; on any failure nothing is written.
    """
    import tvm

    builder = create_target(target, **(target_options or {}))
    on_step("import")
    model = load_onnx(Path(model_path))
    mod = to_relax(model)
    on_step("build")
    started = time.perf_counter()
    executable = builder.build(mod)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="edgecam-build-") as tmp:
        library = builder.export(executable, Path(tmp))
        on_step("verify")
        verification = (
            _verify(model, Path(tmp) / library, tolerance, samples) if builder.runs_here() else None
        )
        if verification is None:
            log.warning(
                "this host cannot run %s code: the artifact is not verified against ONNX Runtime", target
            )
        on_step("write")
        manifest = Manifest(
            model_name=model.name,
            tvm_version=tvm.__version__,
            runtime="tvm",
            library=library,
            target=builder.info(),
            inputs=model.inputs,
            outputs=model.outputs,
            preprocessing=model.preprocessing,
            postprocessing=model.postprocessing,
            labels=model.labels,
            source=SourceModel(file=model.path.name, sha256=sha256_file(model.path)),
            verification=verification,
            measurements={
                "build_seconds": round(build_seconds, 3),
                "library_bytes": float((Path(tmp) / library).stat().st_size),
            },
        )
        # The source model travels along: the server's reference for shadow checks and debugging.
        return write_artifact(
            Path(out_dir), manifest, {library: Path(tmp) / library, "reference.onnx": model.path}
        )


def _verify(model: Any, library: Path, tolerance: float, samples: int) -> Verification:
    feeds = verify.sample_inputs(model, samples)
    got = verify.run_library(library, feeds, [spec.name for spec in model.inputs])
    expected = verify.run_onnxruntime(model.path, feeds)
    difference = verify.max_difference(got, expected)
    verify.check(difference, tolerance)
    return Verification(samples=samples, max_abs_diff=difference, tolerance=tolerance)
