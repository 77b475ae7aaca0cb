"""Compiled library against ONNX Runtime on the same inputs: the check every artifact passes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecam.compiler.errors import VerificationError
from edgecam.compiler.frontends.onnx import OnnxModel
from edgecam.datatypes import to_numpy
from edgecam.ort_options import session_options
from edgecam.preprocessing import preprocess


def sample_inputs(model: OnnxModel, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded random camera frames through the model's own preprocessing, so values are in range."""
    rng = np.random.default_rng(seed)
    spec = model.preprocessing
    first = model.inputs[0]
    feeds = []
    for _ in range(count):
        frame = rng.integers(0, 256, size=(spec.height, spec.width, 3), dtype=np.uint8)
        # A model may take the image as e.g. UINT8 (with scale 1): feed it the dtype it declares.
        feed = {first.name: preprocess(frame, spec).astype(to_numpy(first.datatype))}
        for extra in model.inputs[1:]:  # non-image inputs: standard normal values of the right shape
            feed[extra.name] = rng.standard_normal(extra.shape).astype(to_numpy(extra.datatype))
        feeds.append(feed)
    return feeds


def run_library(
    library: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    input_names: list[str],
    params: Sequence[np.ndarray] = (),
    transform: str | None = None,
) -> list[list[np.ndarray]]:
    """Outputs of the compiled library on `feeds`, through the same runtime API a camera uses.

    `params` are weights the library takes after the inputs (an artifact's coded weights, decoded);
    with `transform`, that function runs once on them first and `main` takes its outputs, as on a camera.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    weights = [tvm.runtime.tensor(np.ascontiguousarray(value), tvm.cpu()) for value in params]
    if transform is not None:
        weights = list(vm[transform](weights))
    results = []
    for feed in feeds:
        out = vm["main"](*(tvm.runtime.tensor(feed[name], tvm.cpu()) for name in input_names), *weights)
        results.append(_flatten(out))
    return results


def _flatten(value: object) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [array for item in value for array in _flatten(item)]  # type: ignore[attr-defined]


def run_onnxruntime(onnx_path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The reference outputs: ONNX Runtime's CPU provider on the source model."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
        return [list(session.run(None, feed)) for feed in feeds]
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise VerificationError(
            f"ONNX Runtime, the reference, cannot run {onnx_path.name}: {exc}; nothing was written"
        ) from exc


def max_difference(got: list[list[np.ndarray]], expected: list[list[np.ndarray]]) -> float:
    """Largest |got - expected| over every sample and output, in float64; shape mismatches fail."""
    worst = 0.0
    for got_outputs, expected_outputs in zip(got, expected, strict=True):
        if len(got_outputs) != len(expected_outputs):
            raise VerificationError(
                f"compiled model has {len(got_outputs)} outputs, ONNX Runtime {len(expected_outputs)}"
            )
        for a, b in zip(got_outputs, expected_outputs, strict=True):
            if a.shape != b.shape:
                raise VerificationError(
                    f"output shape {list(a.shape)} differs from ONNX Runtime's {list(b.shape)}"
                )
            worst = max(
                worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            )
    return worst


def check(difference: float, tolerance: float) -> None:
    """Raise VerificationError unless `difference` is within `tolerance` (NaN never is)."""
    if not difference <= tolerance:  # also catches NaN
        raise VerificationError(
            f"compiled model differs from ONNX Runtime by {difference:.3g} (tolerance {tolerance:.3g}); "
            "nothing was written. Report the model, or raise --tolerance if the difference is expected"
        )
