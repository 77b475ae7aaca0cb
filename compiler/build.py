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
from edgecam.compiler.errors import BuildError, CompilerError, InvalidOptionError
from edgecam.compiler.frontends.onnx import OnnxModel, load_onnx, to_relax
from edgecam.compiler.targets import Target, create_target

log = logging.getLogger(__name__)

STEPS = ("import", "build", "verify", "write")
DEFAULT_TOLERANCE = 1e-4  # absolute, for fp32 logits: TVM and ORT sum in different orders
DEFAULT_SAMPLES = 8
REFERENCE_NAME = "reference.onnx"


def compile_model(
    model_path: Path,
    target: str,
    out_dir: Path,
    target_options: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = DEFAULT_SAMPLES,
    on_step: Callable[[str], None] = lambda step: None,
) -> Artifact:
    """Compile an ONNX model for `target` and write a verified artifact to `out_dir`.

    `on_step` is called with each of STEPS as it starts (the CLI draws progress from it). Raises
    CompilerError subclasses; on any failure nothing is written.
    """
    _check_options(tolerance, samples)
    builder = create_target(target, **(target_options or {}))
    on_step("import")
    model = load_onnx(Path(model_path))
    mod = to_relax(model)
    on_step("build")
    started = time.perf_counter()
    executable = _build(builder, mod, target)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="edgecam-build-") as tmp:
        library = _export(builder, executable, Path(tmp), target)
        on_step("verify")
        verification = None
        if builder.runs_here():
            verification = _verify(model, Path(tmp) / library, tolerance, samples)
        else:
            log.warning(
                "this host cannot run %s code: the artifact is not verified against ONNX Runtime", target
            )
        on_step("write")
        manifest = _manifest(model, builder, Path(tmp) / library, verification, build_seconds)
        # The source model travels along: the server's reference for shadow checks and debugging.
        return write_artifact(
            Path(out_dir), manifest, {library: Path(tmp) / library, REFERENCE_NAME: model.path}
        )


def _manifest(
    model: OnnxModel, builder: Target, library: Path, verification: Verification | None, build_seconds: float
) -> Manifest:
    import tvm

    return Manifest(
        model_name=model.name,
        tvm_version=tvm.__version__,
        runtime="tvm",
        library=library.name,
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
            "library_bytes": float(library.stat().st_size),
        },
    )


def _check_options(tolerance: float, samples: int) -> None:
    if not tolerance >= 0:  # also refuses NaN, which no difference could ever pass
        raise InvalidOptionError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if samples < 1:
        raise InvalidOptionError(f"samples must be >= 1 to verify anything, got {samples}")


def _build(builder: Target, mod: Any, target: str) -> Any:
    try:
        return builder.build(mod)
    except CompilerError:
        raise
    except Exception as exc:  # TVM raises assorted error types from deep inside its passes
        log.debug("build failed", exc_info=True)
        raise BuildError(f"TVM could not build the model for {target}: {exc}") from exc


def _export(builder: Target, executable: Any, directory: Path, target: str) -> str:
    try:
        return builder.export(executable, directory)
    except Exception as exc:  # usually the system linker (cc) is missing or cannot link this target
        raise BuildError(
            f"exporting the {target} library failed: {exc}; is a C compiler/linker for the target installed?"
        ) from exc


def _verify(model: OnnxModel, library: Path, tolerance: float, samples: int) -> Verification:
    feeds = verify.sample_inputs(model, samples)
    got = verify.run_library(library, feeds, [spec.name for spec in model.inputs])
    expected = verify.run_onnxruntime(model.path, feeds)
    difference = verify.max_difference(got, expected)
    verify.check(difference, tolerance)
    return Verification(samples=samples, max_abs_diff=difference, tolerance=tolerance)
