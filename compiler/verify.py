"""Compiled library against ONNX Runtime on the same inputs: the check every artifact passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecam.compiler.errors import VerificationError
from edgecam.compiler.frontends.onnx import OnnxModel
from edgecam.datatypes import to_numpy
from edgecam.ort_options import session_options
from edgecam.preprocessing import preprocess

FLOAT_TOLERANCE = 1e-4  # absolute, for fp32 outputs: TVM and ORT sum in different orders
# For a quantized (QDQ) model: how many quantization steps of an output TVM may differ from ONNX
# Runtime by. An intermediate value that lands near a rounding tie can round either way, and the
# one-step flip moves every later layer. Seen on EfficientNet-Lite0 int8 (32 random frames, x86-64-v3):
# ORT's fused int8 kernels and ORT running the same graph's float ops differ by up to 5.5 steps of
# the logits; TVM's integer build equals the fused kernels on 20 frames and is off by up to 6.6 steps
# on the rest (6.2 at most over 96 frames); 12 is about twice that. Still refused: a wrong lowering
# (an activation scale 10% off: 23 steps on the tests' int8 convnet; a misplaced layer: most of the
# range). Not told apart from rounding: small systematic errors (a zero point off by one: 2.6 steps).
QUANTIZED_STEPS = 12
_QUANTIZED_RANGE_STEPS = 255  # an 8-bit output's range in steps
# Ops that move or reshape values without computing new ones: an output they pass on keeps the
# quantization grid of the DequantizeLinear before them.
_VALUE_PRESERVING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


@dataclass(frozen=True)
class Tolerance:
    """What the compiled model may differ from ONNX Runtime by: one absolute bound per output, in the
    model's output order, and the rule that set them (for error messages)."""

    per_output: tuple[float, ...]
    rule: str

    @property
    def loosest(self) -> float:
        """What the manifest's `tolerance` records: no output was allowed more."""
        return max(self.per_output, default=0.0)


def user_tolerance(value: float, outputs: int) -> Tolerance:
    """The same absolute bound for every output (`--tolerance`)."""
    return Tolerance((value,) * outputs, "as given")


def model_tolerance(proto: Any, expected: list[list[np.ndarray]]) -> Tolerance:
    """The default tolerance for this model: FLOAT_TOLERANCE for a float model; for a QDQ model (one
    that quantizes activations), QUANTIZED_STEPS quantization steps of each output (at least
    FLOAT_TOLERANCE).

    An output written by a DequantizeLinear (through reshapes) steps by that DequantizeLinear's scale
    (the largest, when per channel). An output a float op computes from dequantized values (the int8
    pass keeps logits float) has no grid of its own: its step is taken as 1/255 of the range ONNX
    Runtime's outputs span on the verification samples, what 8-bit quantization of it would step by.
    `expected` is ONNX Runtime's outputs per sample.
    """
    graph = proto.graph
    # Quantized activations are what round differently; weights that are only dequantized (to float,
    # by TVM as by ORT) leave a float model.
    if not any(node.op_type == "QuantizeLinear" for node in graph.node):
        return Tolerance((FLOAT_TOLERANCE,) * len(graph.output), "absolute, for a float model")
    bounds = []
    for index, output in enumerate(graph.output):
        step = _dequantized_step(graph, output.name)
        if step is None:
            values = np.concatenate([np.ravel(sample[index]).astype(np.float64) for sample in expected])
            step = float(np.ptp(values)) / _QUANTIZED_RANGE_STEPS if values.size else 0.0
        bounds.append(max(QUANTIZED_STEPS * step, FLOAT_TOLERANCE))
    return Tolerance(
        tuple(bounds), f"{QUANTIZED_STEPS} quantization steps of the output, for a quantized model"
    )


def _dequantized_step(graph: Any, name: str) -> float | None:
    """The scale of the DequantizeLinear whose values `name` carries, None if a computing op is between."""
    from onnx import numpy_helper

    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}
    constants |= {
        node.output[0]: attr.t
        for node in graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    }
    node = producers.get(name)
    while node is not None and node.op_type in _VALUE_PRESERVING:
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in constants:
        return None
    return float(np.max(np.abs(numpy_helper.to_array(constants[node.input[1]]))))


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
    from edgecam import tvm_threads

    tvm_threads.use_physical_cores()  # before TVM's pool starts: a later runtime in this process shares it
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
    return max(output_differences(got, expected), default=0.0)


def output_differences(got: list[list[np.ndarray]], expected: list[list[np.ndarray]]) -> list[float]:
    """Largest |got - expected| of each output over every sample, in float64; shape mismatches fail."""
    worst: list[float] = []
    for got_outputs, expected_outputs in zip(got, expected, strict=True):
        if len(got_outputs) != len(expected_outputs):
            raise VerificationError(
                f"compiled model has {len(got_outputs)} outputs, ONNX Runtime {len(expected_outputs)}"
            )
        worst += [0.0] * (len(got_outputs) - len(worst))
        for index, (a, b) in enumerate(zip(got_outputs, expected_outputs, strict=True)):
            if a.shape != b.shape:
                raise VerificationError(
                    f"output shape {list(a.shape)} differs from ONNX Runtime's {list(b.shape)}"
                )
            difference = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            worst[index] = max(worst[index], difference)
    return worst


def check(difference: float, tolerance: float, output: str | None = None, rule: str | None = None) -> None:
    """Raise VerificationError unless `difference` is within `tolerance` (NaN never is); the message
    names the `output` and the `rule` that set the tolerance when given."""
    if not difference <= tolerance:  # also catches NaN
        where = f" in output {output!r}" if output else ""
        why = f": {rule}" if rule else ""
        raise VerificationError(
            f"compiled model differs from ONNX Runtime by {difference:.3g}{where} "
            f"(tolerance {tolerance:.3g}{why}); nothing was written. "
            "Report the model, or raise --tolerance if the difference is expected"
        )


def check_outputs(differences: Sequence[float], tolerance: Tolerance, names: Sequence[str]) -> None:
    """`check` each output's largest difference against its own bound."""
    for name, difference, bound in zip(names, differences, tolerance.per_output, strict=True):
        check(difference, bound, name, tolerance.rule)
