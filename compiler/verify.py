"""Compiled library against ONNX Runtime on the same inputs: the check every artifact passes.

Differences are judged against each output's scale (its largest |value| on the verification inputs),
so a network whose outputs are 1e-9 (random weights) is held to 1e-13, not to an absolute 1e-4 it
would pass whatever it computed. Where the outputs do not depend on the verification inputs (a
saturated classifier, a bias that drowns the signal), the outputs cannot show a wrong build: the
tensors where the inputs' influence ends are compared too (compiler/intermediates.py), from a build
of the model that also outputs them. The manifest's `verification.compared` says what was compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecam.compiler import intermediates
from edgecam.compiler.artifact import Compared, Verification
from edgecam.compiler.errors import VerificationError
from edgecam.compiler.frontends.onnx import OnnxModel
from edgecam.datatypes import from_numpy, to_numpy
from edgecam.library import CompiledLibrary, LibraryError
from edgecam.model import TensorSpec
from edgecam.ort_options import session_options
from edgecam.preprocessing import preprocess

# For fp32 outputs, relative to the output's largest |value| over the samples: TVM and ORT sum in
# different orders. Seen (bench_unseen-20261207-vm-3.json, nine 224×224 random-weight networks):
# 5e-7..2e-6 of the scale, 1.2e-5 on GhostNet (activations growing to 1e5), intermediates alike;
# a wrong weight moves an output by a large fraction of its scale (test_verify_scale.py).
FLOAT_TOLERANCE = 1e-4
# A model that computes in a narrower float type (the fp16 pass's float16, bfloat16) is held to a number
# of that type's machine epsilons of each output's scale instead: ORT and TVM round every layer's
# result to it at different points (ORT's CPU kernels widen float16 to float32 inside an op, TVM's
# build computes some ops in float16 throughout). Seen on the bundled CNN's fp16 recipe: 0.0019 of the
# logits' scale, 2 epsilons of float16; 16 leaves room for deeper networks. A wrong weight still moves
# an output by a large fraction of its scale (tests/compiler/test_verify_tolerance.py).
REDUCED_PRECISION_EPSILONS = 16
# Machine epsilon of the float types below float32 that a model's tensors may be stored in
# (onnx.TensorProto.FLOAT16 = 10, BFLOAT16 = 16); numpy has no bfloat16 to ask.
_REDUCED_EPSILON = {10: ("float16", 2.0**-10), 16: ("bfloat16", 2.0**-7)}
# An output (or tensor) the verification inputs move by less than this much of its scale is taken not
# to depend on them: a wrong computation of what the inputs do could then hide under the tolerance.
# It costs a second build (the model with the frontier tensors as outputs): of the nine networks of
# bench_unseen, DenseNet-BC's logits (moved 0.9%) and EfficientNet-B0's (0.5%) took it.
INPUT_SENSITIVITY = 1e-2
_TINY = float(np.finfo(np.float32).tiny)  # scale floor: an all-zero output must then match exactly
METRIC = "max|edgecam - onnxruntime| / max|onnxruntime|"
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


def output_scales(expected: Sequence[Sequence[np.ndarray]], outputs: int) -> list[float]:
    """Each output's largest |value| over the samples (ONNX Runtime's), at least the smallest normal
    float32: what its differences are measured against."""
    scales = [_TINY] * outputs
    for sample in expected:
        for index, value in enumerate(sample[:outputs]):
            magnitude = float(np.max(np.abs(np.asarray(value, np.float64)), initial=0.0))
            scales[index] = max(scales[index], magnitude)
    return scales


def model_tolerance(proto: Any, expected: list[list[np.ndarray]]) -> Tolerance:
    """The default tolerance for this model: float_tolerance (FLOAT_TOLERANCE, or epsilons of a narrower
    float type the model computes in) of each output's scale (output_scales) for a float model; for a
    QDQ model (one that quantizes activations), QUANTIZED_STEPS quantization steps of each output (at
    least the float bound).

    An output written by a DequantizeLinear (through reshapes) steps by that DequantizeLinear's scale
    (the largest, when per channel). An output a float op computes from dequantized values (the int8
    pass keeps logits float) has no grid of its own: its step is taken as 1/255 of the range ONNX
    Runtime's outputs span on the verification samples, what 8-bit quantization of it would step by.
    `expected` is ONNX Runtime's outputs per sample.
    """
    graph = proto.graph
    relative, float_rule = float_tolerance(proto)
    floats = [relative * scale for scale in output_scales(expected, len(graph.output))]
    # Quantized activations are what round differently; weights that are only dequantized (to float,
    # by TVM as by ORT) leave a float model.
    if not any(node.op_type == "QuantizeLinear" for node in graph.node):
        return Tolerance(tuple(floats), float_rule)
    bounds = []
    for index, output in enumerate(graph.output):
        step = _dequantized_step(graph, output.name)
        if step is None:
            values = np.concatenate([np.ravel(sample[index]).astype(np.float64) for sample in expected])
            step = float(np.ptp(values)) / _QUANTIZED_RANGE_STEPS if values.size else 0.0
        bounds.append(max(QUANTIZED_STEPS * step, floats[index]))
    return Tolerance(
        tuple(bounds), f"{QUANTIZED_STEPS} quantization steps of the output, for a quantized model"
    )


def float_tolerance(proto: Any) -> tuple[float, str]:
    """The bound relative to an output's scale that the model's float precision allows, and its rule:
    FLOAT_TOLERANCE for float32; REDUCED_PRECISION_EPSILONS epsilons of the narrowest float type the
    model stores a tensor in (an initializer, a Cast target, a typed intermediate) when that is narrower."""
    precisions = precision_types(proto)
    narrowest = max(precisions, key=lambda code: _REDUCED_EPSILON[code][1], default=None)
    if narrowest is None:
        return FLOAT_TOLERANCE, f"{FLOAT_TOLERANCE:g} of the output's largest |value|, for a float model"
    name, epsilon = _REDUCED_EPSILON[narrowest]
    relative = max(FLOAT_TOLERANCE, REDUCED_PRECISION_EPSILONS * epsilon)
    return relative, (
        f"{relative:.3g} of the output's largest |value|: {REDUCED_PRECISION_EPSILONS} epsilons of "
        f"{name}, the model's narrowest float type"
    )


def precision_types(proto: Any) -> set[int]:
    """The reduced-precision float types (onnx.TensorProto codes) the model's graph holds a tensor in."""
    graph = proto.graph
    codes = {init.data_type for init in graph.initializer}
    casts = [node for node in graph.node if node.op_type == "Cast"]
    codes |= {attr.i for node in casts for attr in node.attribute if attr.name == "to"}
    values = [*graph.input, *graph.value_info, *graph.output]
    codes |= {value.type.tensor_type.elem_type for value in values if value.type.HasField("tensor_type")}
    return codes & set(_REDUCED_EPSILON)


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
    """Outputs of the compiled library on `feeds`, run by the camera's own code (edgecam/library.py:
    staging buffers, weights through `transform`, outputs copied out), on this machine's CPU.

    `params` are weights the library takes after the inputs (an artifact's coded weights, decoded);
    with `transform`, that function runs once on them first and `main` takes its outputs, as on a camera.
    """
    if not feeds:
        return []
    # The inputs' shapes and types as the feeds carry them (a camera reads them from the manifest).
    first = feeds[0]
    specs = [
        TensorSpec(name=n, datatype=from_numpy(first[n].dtype), shape=list(first[n].shape))
        for n in input_names
    ]
    try:
        compiled = CompiledLibrary(library, specs, params=params, transform=transform)
    except LibraryError as exc:
        raise VerificationError(str(exc)) from exc
    return [compiled.run(feed) for feed in feeds]


def run_onnxruntime(onnx_path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The reference outputs: ONNX Runtime's CPU provider on the source model."""
    return _onnxruntime(str(onnx_path), onnx_path.name, feeds)


def _onnxruntime(
    model: str | bytes, name: str, feeds: Sequence[dict[str, np.ndarray]]
) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
        return [list(session.run(None, feed)) for feed in feeds]
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise VerificationError(
            f"ONNX Runtime, the reference, cannot run {name}: {exc}; nothing was written"
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


def check(
    difference: float,
    tolerance: float,
    output: str | None = None,
    rule: str | None = None,
    scale: float | None = None,
    kind: str = "output",
) -> None:
    """Raise VerificationError unless `difference` is within `tolerance` (NaN never is); the message
    names the `output` (or intermediate tensor: `kind`), its `scale` and the `rule` that set the
    tolerance when given."""
    if not difference <= tolerance:  # also catches NaN
        where = f" in {kind} {output!r}" if output else ""
        relative = f", {difference / scale:.3g} of its largest |value| {scale:.3g}" if scale else ""
        why = f": {rule}" if rule else ""
        raise VerificationError(
            f"compiled model differs from ONNX Runtime by {difference:.3g}{where}{relative} "
            f"(tolerance {tolerance:.3g}{why}); nothing was written. "
            "Report the model, or raise --tolerance if the difference is expected"
        )


def check_outputs(
    differences: Sequence[float],
    tolerance: Tolerance,
    names: Sequence[str],
    scales: Sequence[float] | None = None,
    kind: str = "output",
) -> None:
    """`check` each output's largest difference against its own bound."""
    for index, (name, difference, bound) in enumerate(
        zip(names, differences, tolerance.per_output, strict=True)
    ):
        check(difference, bound, name, tolerance.rule, scales[index] if scales else None, kind)


def verify_outputs(
    model: OnnxModel,
    feeds: Sequence[dict[str, np.ndarray]],
    got: list[list[np.ndarray]],
    tolerance: float | None,
    run_variant: Callable[[Any], list[list[np.ndarray]]],
    runner: str = "native",
) -> Verification:
    """Check the library's outputs `got` on `feeds` against ONNX Runtime's, and, where an output does not
    depend on the feeds, the frontier tensors too (`run_variant(proto)` builds a model with more outputs
    through the same pipeline and runs it on `feeds`). Raises VerificationError; returns the record.

    `tolerance`: an absolute bound for every output (--tolerance); None: model_tolerance."""
    names = [spec.name for spec in model.outputs]
    expected = run_onnxruntime(model.path, feeds)
    differences = output_differences(got, expected)
    bounds = (
        model_tolerance(model.proto, expected) if tolerance is None else user_tolerance(tolerance, len(names))
    )
    scales = output_scales(expected, len(names))
    check_outputs(differences, bounds, names, scales)
    moved = [intermediates.relative_spread([sample[i] for sample in expected]) for i in range(len(names))]
    compared = _compared(names, "output", differences, bounds.per_output, scales, moved)
    depend = None if len(feeds) < 2 else all(spread > INPUT_SENSITIVITY for spread in moved)
    if depend is False:
        compared += _check_intermediates(model, feeds, tolerance, run_variant)
    return Verification(
        samples=len(feeds),
        max_abs_diff=max(differences, default=0.0),
        tolerance=bounds.loosest,
        runner=runner,
        outputs_depend_on_inputs=depend,
        compared=compared,
    )


def _check_intermediates(
    model: OnnxModel,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerance: float | None,
    run_variant: Callable[[Any], list[list[np.ndarray]]],
) -> list[Compared]:
    """Compare the frontier tensors (intermediates.frontier) of a build that outputs them too."""
    sensitivity = intermediates.tensor_sensitivity(model.proto, feeds)
    tensors = intermediates.frontier(model.proto, sensitivity, INPUT_SENSITIVITY)
    if not tensors:  # nothing in the model depends on the inputs: the outputs were all there was to check
        return []
    variant = intermediates.with_outputs(model.proto, tensors)
    first = len(model.outputs)
    expected = _onnxruntime(
        variant.SerializeToString(), f"{model.path.name} with intermediate outputs", feeds
    )
    got = run_variant(variant)
    differences = output_differences(got, expected)[first:]
    rule = model_tolerance(variant, expected)
    # --tolerance is about the outputs; an intermediate keeps the model's own rule unless that allows more.
    allowed = [max(bound, tolerance or 0.0) for bound in rule.per_output[first:]]
    scales = output_scales(expected, first + len(tensors))[first:]
    check_outputs(differences, Tolerance(tuple(allowed), rule.rule), tensors, scales, "intermediate tensor")
    return _compared(tensors, "intermediate", differences, allowed, scales, [sensitivity[t] for t in tensors])


def _compared(
    names: Sequence[str],
    kind: Literal["output", "intermediate"],
    differences: Sequence[float],
    bounds: Sequence[float],
    scales: Sequence[float],
    moved: Sequence[float],
) -> list[Compared]:
    return [
        Compared(
            tensor=name,
            kind=kind,
            metric=METRIC,
            value=difference / scale,
            bound=bound / scale,
            scale=scale,
            input_sensitivity=spread,
        )
        for name, difference, bound, scale, spread in zip(
            names, differences, bounds, scales, moved, strict=True
        )
    ]
