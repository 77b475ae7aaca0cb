"""ONNX's backend test cases and one case's run through edgecam and through plain TVM (for
bench_onnx_backend.py and its sampled test in the default suite).

Cases: `node` (one model per operator case; this onnx wheel does not ship their data, so they are
written once from onnx's own generators, `onnx.backend.test.case.node.collect_testcases`, into
CASES_CACHE), `simple`, `pytorch-converted`, `pytorch-operator` (onnx/backend/test/data/<kind>/<case>:
model.onnx and test_data_set_*/{input,output}_*.pb) and `light` (whole networks: light_<name>.onnx with
light_<name>_output_0.pb, fed the deterministic input onnx's own runner feeds them,
`Runner.generate_dummy_data`).

A case is compiled for x86_64 by edgecam (the model's import, `Target.build`: every edgecam rewrite
and schedule, the library exported and run through the runtime API a camera uses; a model with an
image input goes the whole way, `compile_model` with its ONNX Runtime check and the server's
`load_model`) and by plain TVM (`from_onnx` + `tvm.compile` with TVM's default pipeline for the
same target + Relax VM), both compared with the expected outputs at the case's tolerance.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")
CASES_CACHE = Path.home() / ".cache" / "edgecam" / "onnx-backend-test"
QDQ_OPSET = 13
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-7  # onnx's TestCase defaults, used where a case has none


def data_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def cases(kind: str) -> list[Path]:
    """Every case of `kind`, sorted: a directory, or for `light` the model file."""
    if kind == "light":
        return sorted(data_dir().joinpath("light").glob("light_*.onnx"))
    if kind == "node":
        return _node_cases()
    return sorted(p for p in data_dir().joinpath(kind).iterdir() if (p / "model.onnx").is_file())


def _node_cases() -> list[Path]:
    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    root = CASES_CACHE / onnx.__version__ / "node"
    done = root / "complete"
    if not done.is_file():
        for case in node.collect_testcases(None):
            where = root / case.name
            (where / "test_data_set_0").mkdir(parents=True, exist_ok=True)
            (where / "model.onnx").write_bytes(case.model.SerializeToString())
            meta: dict[str, Any] = {"rtol": case.rtol, "atol": case.atol}
            inputs, outputs = case.data_sets[0]
            try:
                for prefix, values in (("input", inputs), ("output", outputs)):
                    for j, value in enumerate(values):
                        proto = (
                            value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(value)
                        )
                        (where / "test_data_set_0" / f"{prefix}_{j}.pb").write_bytes(
                            proto.SerializeToString()
                        )
            except Exception as exc:  # sequences, optionals, maps: no tensor to write
                meta["unsupported"] = f"test data is not tensors ({type(exc).__name__})"
            (where / "meta.json").write_text(json.dumps(meta))
        done.write_text("")
    return sorted(p for p in root.iterdir() if p.is_dir())


def load_case(case: Path) -> tuple[Any, dict[str, np.ndarray], list[np.ndarray], float, float]:
    """(model, feeds by input name, expected outputs, rtol, atol)."""
    import onnx
    from onnx import numpy_helper

    if case.suffix == ".onnx":  # light
        from onnx.backend.test.runner import Runner

        model = onnx.load(str(case))
        feeds = {v.name: Runner.generate_dummy_data(v, seed=0, name=case.stem) for v in _inputs(model)}
        expected = [numpy_helper.to_array(onnx.load_tensor(str(case.with_name(f"{case.stem}_output_0.pb"))))]
        return model, feeds, expected, DEFAULT_RTOL, DEFAULT_ATOL
    model = onnx.load(str(case / "model.onnx"))
    meta = json.loads((case / "meta.json").read_text()) if (case / "meta.json").is_file() else {}
    data = case / "test_data_set_0"
    names = [v.name for v in _inputs(model)]
    feeds = {
        names[j]: numpy_helper.to_array(onnx.load_tensor(str(data / f"input_{j}.pb")))
        for j in range(len(list(data.glob("input_*.pb"))))
    }
    expected = [
        numpy_helper.to_array(onnx.load_tensor(str(data / f"output_{j}.pb")))
        for j in range(len(list(data.glob("output_*.pb"))))
    ]
    return model, feeds, expected, meta.get("rtol", DEFAULT_RTOL), meta.get("atol", DEFAULT_ATOL)


def _inputs(model: Any) -> list[Any]:
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def unsupported(case: Path, model: Any, feeds: dict[str, np.ndarray]) -> str | None:
    """Why the compiled-library contract (static tensors of KServe types in and out) cannot express
    `case`, or None. The reason is edgecam's own import check's message."""
    from edgecam.compiler.errors import ModelImportError
    from edgecam.compiler.frontends.onnx import tensor_specs

    if case.is_dir() and (case / "meta.json").is_file():
        reason = json.loads((case / "meta.json").read_text()).get("unsupported")
        if reason:
            return reason
    for value in (*model.graph.input, *model.graph.output):
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            return f"{value.name!r} is a {kind}, not a tensor"
    try:
        tensor_specs(model, case)
    except ModelImportError as exc:
        return str(exc)
    if len(feeds) != len(_inputs(model)):
        return f"the case feeds {len(feeds)} of the model's {len(_inputs(model))} inputs (some left out)"
    return None


def run_case(case: Path, locate: bool = True) -> dict[str, Any]:
    """The case's row: status ("passed", "failed_edgecam", "failed_tvm", "unsupported"), each engine's
    result ("pass", "wrong: ...", "build: ...", "run: ..."), seconds, and the node a build failed at."""
    started = time.perf_counter()
    model, feeds, expected, rtol, atol = load_case(case)
    row: dict[str, Any] = {"case": case.stem if case.suffix else case.name}
    reason = unsupported(case, model, feeds)
    if reason is not None:
        return {**row, "status": "unsupported", "reason": reason}
    with tempfile.TemporaryDirectory(prefix="edgecam-onnx-case-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        row["ort"] = _onnxruntime(path, feeds, expected, rtol, atol)
        # compile_model verifies against ONNX Runtime: where it cannot run the model, the artifact
        # cannot be verified, and the same build goes the library way.
        verifiable = not row["ort"].startswith("run:")
        row["edgecam"], row["path"], row["node"] = _edgecam(
            path, model, feeds, expected, rtol, atol, locate, verifiable
        )
    row["tvm"] = _plain_tvm(model, feeds, expected, rtol, atol)
    ok_e, ok_t = row["edgecam"] == "pass", row["tvm"] == "pass"
    row["status"] = "passed" if ok_e else ("failed_edgecam" if ok_t else "failed_tvm")
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


Feeds = dict[str, np.ndarray]


def _edgecam(
    path: Path, model: Any, feeds: Feeds, expected: list[np.ndarray], rtol: float, atol: float, locate: bool,
    verifiable: bool,
) -> tuple[str, str, dict[str, Any] | None]:  # fmt: skip
    """(result, which path: "artifact", "library" or why not the artifact, the failing node)."""
    from edgecam.compiler.errors import CompilerError, ModelImportError, NodeBuildError
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.server.runtime import ArtifactError, ModelLoadError

    try:
        load_onnx(path)  # the artifact contract: an image input the camera can feed
        route = "artifact" if verifiable else "library (ONNX Runtime cannot run it to verify an artifact)"
    except ModelImportError:
        route = "library"
    try:
        if route == "artifact":
            try:
                got = _artifact_outputs(path, feeds)
            except (ArtifactError, ModelLoadError) as exc:
                # The server refuses an artifact whose load-time run on zeros gives other output
                # shapes than the manifest's: outputs whose shape depends on an input's values.
                route = f"library (the server refused the artifact: {_line(exc)})"
        if route != "artifact":
            got = _library_outputs(path, model, feeds, locate)
    except NodeBuildError as exc:
        node = {"name": exc.node_name, "op_type": exc.op_type, "opset": exc.opset, "culprit": exc.culprit}
        return f"build: {exc}", route, node
    except ModelImportError as exc:
        return f"import: {exc}", route, None
    except CompilerError as exc:
        return f"build: {exc}", route, None
    except Exception as exc:  # the runtime raises TVM's own error types
        return f"run: {_line(exc)}", route, None
    return compare(got, expected, rtol, atol), route, None


def _onnxruntime(path: Path, feeds: Feeds, expected: list[np.ndarray], rtol: float, atol: float) -> str:
    """ONNX Runtime's result on the case (the peer, recorded; the verdict is on the expected outputs)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, feeds)
    except Exception as exc:  # onnxruntime's own exception types
        return f"run: {_line(exc)}"
    return compare(got, expected, rtol, atol)


def _artifact_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgecam.compiler.build import compile_model
    from edgecam.server.runtime import load_model

    with tempfile.TemporaryDirectory(prefix="edgecam-onnx-art-") as tmp:
        artifact = compile_model(path, "x86_64", Path(tmp) / "art", samples=1)
        loaded = load_model(artifact.path)
        outputs = loaded.runtime.run(feeds)
        return [outputs[spec.name] for spec in artifact.manifest.outputs]


def _library_outputs(path: Path, model: Any, feeds: dict[str, np.ndarray], locate: bool) -> list[np.ndarray]:
    """The same build as compile_model's (import, Target.build, export) run by verify.run_library, for
    models without an image input (their manifest could not describe preprocessing)."""
    from edgecam.compiler import node_errors, verify
    from edgecam.compiler.errors import BuildError, ModelImportError
    from edgecam.compiler.targets import create_target

    builder = create_target("x86_64")
    try:
        mod = node_errors.import_onnx(model)
    except Exception as exc:  # TVM's importer raises assorted types
        if not locate:
            raise ModelImportError(node_errors.cause_of(exc)) from exc
        raise node_errors.explain_import_failure(model, path.name, exc) from exc
    try:
        executable = builder.build(mod)
    except Exception as exc:  # TVM's assorted error types
        if not locate:
            raise BuildError(node_errors.cause_of(exc)) from exc
        raise node_errors.explain_build_failure(model, builder, "x86_64", exc) from exc
    with tempfile.TemporaryDirectory(prefix="edgecam-onnx-lib-") as tmp:
        library = Path(tmp) / builder.export(executable, Path(tmp))
        names = [v.name for v in _inputs(model)]
        return verify.run_library(library, [feeds], names)[0]


def _plain_tvm(
    model: Any, feeds: dict[str, np.ndarray], expected: list[np.ndarray], rtol: float, atol: float
) -> str:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgecam.compiler.targets import create_target

    target = create_target("x86_64").tvm_target()
    try:
        mod = from_onnx(model, keep_params_in_input=False)
    except Exception as exc:  # TVM's assorted error types
        return f"import: {_line(exc)}"
    try:
        with target:
            executable = tvm.compile(mod, target=target)
    except Exception as exc:  # TVM's assorted error types
        return f"build: {_line(exc)}"
    try:
        vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
        result = vm["main"](*[tvm.runtime.tensor(feeds[v.name]) for v in _inputs(model)])
    except Exception as exc:
        return f"run: {_line(exc)}"
    return compare(_flatten(result), expected, rtol, atol)


def _flatten(value: Any) -> list[np.ndarray]:
    """The VM's result as arrays; a shape value (TVM's result for ONNX Shape) as int64 values."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if all(isinstance(item, int) for item in value):
        return [np.asarray(list(value), np.int64)]
    return [array for item in value for array in _flatten(item)]


def compare(got: list[np.ndarray], expected: list[np.ndarray], rtol: float, atol: float) -> str:
    """ "pass", or what differs (onnx's backend runner's check: assert_allclose at the case's rtol/atol)."""
    if len(got) != len(expected):
        return f"wrong: {len(got)} outputs, expected {len(expected)}"
    for j, (g, e) in enumerate(zip(got, expected, strict=True)):
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"wrong: output {j} has shape {list(g.shape)}, expected {list(e.shape)}"
        if e.dtype.kind in "fc":
            if not np.allclose(g.astype(e.dtype), e, rtol=rtol, atol=atol, equal_nan=True):
                err = float(np.nanmax(np.abs(g.astype(np.float64) - e.astype(np.float64))))
                return f"wrong: output {j} differs by up to {err:.3g}"
        elif not np.array_equal(g.astype(e.dtype), e):
            return f"wrong: output {j} differs"
    return "pass"


def _line(exc: BaseException) -> str:
    from edgecam.compiler.node_errors import cause_of

    return cause_of(exc)[:300]


def run_int8(case: Path, frames: int = 8) -> dict[str, Any]:
    """A whole network (light/) through edgecam's int8 pass, calibrated on OpenCV's sample photos
    (real images, through the preprocessing edgecam infers for the input), then compile_model for
    x86_64, which verifies the integer build against ONNX Runtime's int8 within the documented
    tolerance (a few output quantization steps)."""
    import cv2
    import onnx

    from edgecam.compiler.build import compile_model
    from edgecam.compiler.errors import CompilerError
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
    from edgecam.models.efficientnet_lite0 import opencv_doc
    from edgecam.preprocessing import preprocess

    started = time.perf_counter()
    row: dict[str, Any] = {"case": case.stem}
    described = load_onnx(case)
    photos = sorted((opencv_doc.fetch() / opencv_doc.PHOTOS_DIR).glob("*.jpg"))[:frames]
    images = [image for image in (cv2.imread(str(p)) for p in photos) if image is not None]
    feeds = [{described.inputs[0].name: preprocess(image, described.preprocessing)} for image in images]
    with tempfile.TemporaryDirectory(prefix="edgecam-onnx-int8-") as tmp:
        try:
            quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(
                _without_initializer_inputs(onnx.load(str(case))), PassContext(feeds, Path(tmp) / "work")
            )
            path = Path(tmp) / "int8.onnx"
            onnx.save(quantized.model, str(path))
            artifact = compile_model(path, "x86_64", Path(tmp) / "art", samples=2)
        except CompilerError as exc:
            return {**row, "int8": f"failed: {exc}"[:600], "seconds": round(time.perf_counter() - started, 1)}
    verification = artifact.manifest.verification
    assert verification is not None  # x86_64 on this host verifies natively
    return {
        **row,
        "int8": "pass",
        "calibration_images": len(feeds),
        "max_abs_diff": verification.max_abs_diff,
        "tolerance": verification.tolerance,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _without_initializer_inputs(model: Any) -> Any:
    """The same model in IR 4+ form at opset 13 or later: these IR-3 exports list every weight as a
    graph input too, which ONNX Runtime's quantizer then asks to be fed."""
    import onnx.version_converter

    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    # Per-channel QDQ (DequantizeLinear's axis) needs opset 13; these exports are opset 6-9.
    return onnx.version_converter.convert_version(model, max(QDQ_OPSET, _opset(model)))


def _opset(model: Any) -> int:
    return max((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), default=0)
