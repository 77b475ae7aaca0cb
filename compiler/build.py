"""`compile_model`: ONNX → Relax → target build → verified artifact. The one compile path."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam import weight_codec
from edgecam.compiler import node_errors, tuning, verify
from edgecam.compiler.artifact import (
    Artifact,
    CodedWeights,
    Manifest,
    SourceModel,
    Verification,
    sha256_file,
    write_artifact,
)
from edgecam.compiler.errors import BuildError, CompilerError, InvalidOptionError
from edgecam.compiler.frontends.onnx import OnnxModel, load_onnx, to_relax
from edgecam.compiler.targets import Target, create_target
from edgecam.compiler.targets.base import LibraryRunner

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgecam.compiler.passes.base import WeightCoding

log = logging.getLogger(__name__)

STEPS = ("import", "build", "verify", "write")
DEFAULT_SAMPLES = 8
REFERENCE_NAME = "reference.onnx"
WEIGHTS_NAME = "weights.ecw"
TRANSFORM_FUNCTION = "main_transform_params"  # what LiftTransformParams names main's weight transform


@dataclass
class _CodedParams:
    """Initializers the artifact stores coded: `main` takes them (decoded) after its inputs, in this order."""

    names: list[str]
    blobs: dict[str, bytes]
    arrays: list[np.ndarray]  # decoded by the runtime's codec, equal to the model's initializers
    transform: str | None = None


def compile_model(
    model_path: Path,
    target: str,
    out_dir: Path,
    target_options: dict[str, Any] | None = None,
    tolerance: float | None = None,
    samples: int = DEFAULT_SAMPLES,
    on_step: Callable[[str], None] = lambda step: None,
    weight_coding: WeightCoding | None = None,
    tuned: bool = True,
    sign_key: Ed25519PrivateKey | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    reference: Path | None = None,
) -> Artifact:
    """Compile an ONNX model for `target` and write a verified artifact to `out_dir`.

    `on_step` is called with each of STEPS as it starts (the CLI draws progress from it). With
    `weight_coding`, its initializers are not baked into the library: the library takes them as
    arguments and the artifact stores them coded in WEIGHTS_NAME (decoded by the runtime at load).
    With `tuned` (the default), a tuning database for this model and target (compiler/tuning.py) is
    replayed when one exists; models with coded weights build untuned (their weights are arguments,
    which the tuned pipeline's weight prepacking cannot fold).
    `tolerance` bounds |TVM - ONNX Runtime| on every output; None: what fits the model
    (verify.model_tolerance: 1e-4 for a float32 model, epsilons of float16 for an fp16 one, a few
    quantization steps for an int8 one).
    A codec the runtime cannot decode is refused (InvalidOptionError).
    With `sign_key` the artifact's manifest is signed (edgecam/signing.py).
    `input_shapes` sizes the model's open input dimensions (an open batch is 1 without it).
    `reference` is the model the camera's shadow mode compares the compiled one with, stored as
    REFERENCE_NAME: `compress` passes the original (fp32) model; None: the compiled model itself,
    unless its weights are coded (a raw copy of them would be no reference to compare with).
    Raises CompilerError subclasses; on any failure nothing is written.
    """
    _check_options(tolerance, samples)
    builder = create_target(target, **(target_options or {}))
    on_step("import")
    model = load_onnx(Path(model_path), input_shapes)
    if reference is not None:
        _check_reference(Path(reference), model)
    coded = _coded_params(model, weight_coding) if weight_coding is not None else None
    mod = to_relax(model, coded.names if coded else ())
    if coded is not None:
        mod, coded.transform = _lift_weight_transforms(mod)
    elif tuned:
        builder.database = tuning.find_database(sha256_file(model.path), builder.tvm_target())
    coverage = _tuning_coverage(builder, mod)
    on_step("build")
    started = time.perf_counter()
    executable = _build(builder, mod, model, target)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="edgecam-build-") as tmp:
        library = _export(builder, executable, Path(tmp), target)
        on_step("verify")
        verification = None
        runner = builder.library_runner()
        if runner is not None:
            verification = _verify(
                model, Path(tmp) / library, tolerance, samples, coded, runner, builder, target
            )
        else:
            log.warning(
                "this host cannot run %s code: the artifact is not verified against ONNX Runtime", target
            )
        on_step("write")
        manifest = _manifest(model, builder, Path(tmp) / library, verification, build_seconds, coverage)
        files = {library: Path(tmp) / library}
        # The server's reference for shadow checks and debugging.
        if reference is not None or coded is None:
            files[REFERENCE_NAME] = Path(reference) if reference is not None else model.path
        if coded is not None:
            manifest = _with_coded_weights(manifest, coded, Path(tmp) / WEIGHTS_NAME)
            files[WEIGHTS_NAME] = Path(tmp) / WEIGHTS_NAME
        return write_artifact(Path(out_dir), manifest, files, sign_key)


def _manifest(
    model: OnnxModel,
    builder: Target,
    library: Path,
    verification: Verification | None,
    build_seconds: float,
    coverage: tuple[int, int] | None,
) -> Manifest:
    import tvm

    tuned = {"tuned_tasks": 0.0}
    if coverage is not None:  # tasks with schedules from the database, of all the build's tasks
        tuned = {"tuned_tasks": float(coverage[0]), "tuning_tasks": float(coverage[1])}

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
            # Measured trials in the replayed tuning database; 0: TVM's default (untuned) schedules.
            "tuning_records": float(tuning.records_in(builder.database) if builder.database else 0),
            **tuned,
        },
    )


def _tuning_coverage(builder: Target, mod: Any) -> tuple[int, int] | None:
    """(tasks the replayed database schedules, all tasks) for the manifest; None without a database.
    A database that matches none is said out loud: the build is then as slow as an untuned one."""
    if builder.database is None:
        return None
    tuned, tasks = tuning.tuned_tasks(builder.prepare(mod), builder.tvm_target(), builder.database)
    if tuned == 0:
        log.warning(
            "the tuning database %s holds schedules for none of this build's %d tasks (made for another "
            "import or TVM version?): building with default schedules; rerun `edgecam tune`",
            builder.database,
            tasks,
        )
    elif tuned < tasks:
        log.info("replaying tuned schedules for %d of %d tasks; the rest keep TVM's defaults", tuned, tasks)
    return tuned, tasks


def _check_reference(path: Path, model: OnnxModel) -> None:
    """Refuse a reference the camera's shadow mode could not feed the model's inputs to."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others on a file that is not a model
        raise InvalidOptionError(f"reference {path} is not a readable ONNX model: {exc}") from exc
    initializers = {init.name for init in proto.graph.initializer}
    inputs = {value.name for value in proto.graph.input} - initializers
    missing = sorted({spec.name for spec in model.inputs} - inputs)
    if missing:
        raise InvalidOptionError(
            f"reference {path} lacks the model's inputs {missing} (it takes {sorted(inputs)}); shadow "
            "mode feeds it the model's own inputs: give the model this one was compressed from"
        )


def _check_options(tolerance: float | None, samples: int) -> None:
    if tolerance is not None and not tolerance >= 0:  # also refuses NaN, which no difference could ever pass
        raise InvalidOptionError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if samples < 1:
        raise InvalidOptionError(f"samples must be >= 1 to verify anything, got {samples}")


def _build(builder: Target, mod: Any, model: OnnxModel, target: str) -> Any:
    try:
        return builder.build(mod)
    except CompilerError:
        raise
    except Exception as exc:  # TVM raises assorted error types from deep inside its passes
        log.debug("build failed", exc_info=True)
        log.info("the build failed (%s); locating the ONNX node it fails at", node_errors.cause_of(exc))
        raise node_errors.explain_build_failure(model.proto, builder, target, exc) from exc


def _export(builder: Target, executable: Any, directory: Path, target: str) -> str:
    try:
        return builder.export(executable, directory)
    except Exception as exc:  # usually the system linker (cc) is missing or cannot link this target
        raise BuildError(
            f"exporting the {target} library failed: {exc}; is a C compiler/linker for the target installed?"
        ) from exc


def _verify(
    model: OnnxModel,
    library: Path,
    tolerance: float | None,
    samples: int,
    coded: _CodedParams | None,
    runner: LibraryRunner,
    builder: Target,
    target: str,
) -> Verification:
    feeds = verify.sample_inputs(model, samples)
    names = [spec.name for spec in model.inputs]
    params, transform = (coded.arrays, coded.transform) if coded else ([], None)

    def run_variant(proto: Any) -> list[list[np.ndarray]]:
        """The model with more outputs (verify: intermediates) through this same build, run on `feeds`."""
        variant_model = dataclasses.replace(model, proto=proto)
        mod = to_relax(variant_model, coded.names if coded else ())
        lifted = None
        if coded is not None:
            mod, lifted = _lift_weight_transforms(mod)
        with tempfile.TemporaryDirectory(prefix="edgecam-verify-") as tmp:
            variant = _export(builder, _build(builder, mod, variant_model, target), Path(tmp), target)
            return runner.run(Path(tmp) / variant, feeds, names, params, lifted)

    got = runner.run(library, feeds, names, params, transform)
    return verify.verify_outputs(model, feeds, got, tolerance, run_variant, runner.where)


def _coded_params(model: OnnxModel, coding: WeightCoding) -> _CodedParams | None:
    """The coded initializers in model order, checked: blobs that decode (with the runtime's own decoder)
    to exactly the model's values, which verification then runs. None for an empty coding."""
    from onnx import numpy_helper

    if not coding.encoded:
        return None
    if coding.codec != weight_codec.CODEC:
        # Building the values in instead would quietly undo the size the recipe's report promised.
        raise InvalidOptionError(
            f"weight_coding codec {coding.codec!r} is not one the camera runtime decodes; "
            f"codecs it decodes: {weight_codec.CODEC!r}"
        )
    initializers = {init.name: init for init in model.proto.graph.initializer}
    unknown = sorted(set(coding.encoded) - set(initializers))
    if unknown:
        raise InvalidOptionError(
            f"weight_coding holds {unknown}, which are not initializers of {model.path.name}; "
            f"initializers: {sorted(initializers)}"
        )
    names = [name for name in initializers if name in coding.encoded]
    arrays = []
    for name in names:
        expected = numpy_helper.to_array(initializers[name])
        try:
            decoded = weight_codec.decode(coding.encoded[name])
        except weight_codec.WeightCodecError as exc:
            raise BuildError(f"coded initializer {name!r} does not decode: {exc}") from exc
        if decoded.dtype != expected.dtype or not np.array_equal(decoded, expected):
            raise BuildError(
                f"coded initializer {name!r} decodes to other values than the model holds "
                f"({decoded.dtype}{list(decoded.shape)} vs {expected.dtype}{list(expected.shape)}); "
                "compile the model the coding pass returned"
            )
        arrays.append(decoded)
    return _CodedParams(names, {name: coding.encoded[name] for name in names}, arrays)


def _lift_weight_transforms(mod: Any) -> tuple[Any, str | None]:
    """Move computations on the weight arguments alone (e.g. the transpose of a Gemm weight) into a
    function the runtime runs once at load: bound as constants, FoldConstant would have done them at
    build time; as arguments they would otherwise run on every frame."""
    from tvm import relax

    lifted = relax.transform.LiftTransformParams()(mod)
    names = {gv.name_hint for gv in lifted.get_global_vars()}
    return lifted, TRANSFORM_FUNCTION if TRANSFORM_FUNCTION in names else None


def _with_coded_weights(manifest: Manifest, coded: _CodedParams, path: Path) -> Manifest:
    """Write the bundle to `path` and record it (its sha256 is added with every file's)."""
    weight_codec.write_bundle(path, coded.blobs)
    entry = CodedWeights(
        file=path.name,
        codec=weight_codec.codec_of(coded.blobs.values()),
        params=coded.names,
        transform=coded.transform,
    )
    measurements = {**manifest.measurements, "coded_weight_bytes": float(path.stat().st_size)}
    return manifest.model_copy(update={"coded_weights": entry, "measurements": measurements})
