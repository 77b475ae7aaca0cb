"""The numbers every compression report shows, for one ONNX model (plus an optional WeightCoding).

What is counted:
- params: elements of every initializer (weights, biases, BatchNorm statistics, quantization scales
  and zero points); an initializer stored coded still counts its elements.
- bytes: the serialized ONNX model, except that an initializer a WeightCoding stores coded counts its
  coded bytes instead of its raw tensor: the model's real size once the artifact holds the coding.
- weight_bytes: the initializers alone (tensor bytes, `nbytes`), same rule for coded ones.
- MACs: multiply-accumulates of Conv (groups included: Cin/group per output), ConvTranspose, Gemm,
  MatMul and the integer forms ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul, from the shapes
  `onnx.shape_inference` infers for the model's static input shape (so a Conv reading its weight
  through DequantizeLinear counts too). Not counted: bias adds, activations, pooling, normalization
  and other elementwise work (a few percent on the CNNs edgecam serves), nodes inside subgraphs.
- FLOPs: 2 × MACs (one multiply and one add each).
- latency: wall time of one batch-1 call from Python on the first evaluation input, after `warmup`
  calls; median (p50) and 99th percentile over `runs`. ONNX Runtime: CPU provider, `threads` intra-op
  threads. TVM: the recipe's target built untuned (default schedules, no MetaSchedule) with its
  target plugin, timed in a separate process through the TVM runtime alone (what a camera runs) with
  TVM_NUM_THREADS=`threads`; skipped, with the reason, when this host cannot run the target's code.
- top-1: argmax of the first output against the labels; agreement: the fraction of inputs whose argmax
  equals the original model's (the first model an Evaluator measures).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgecam.compiler.errors import ModelImportError
from edgecam.ort_options import session_options

if TYPE_CHECKING:
    from edgecam.compiler.passes.base import Feeds, WeightCoding

# Op type → (index of its left/data input, index of its weight/right input).
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
_MATMUL_OPS = {"Gemm": (0, 1), "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_TVM_TIMEOUT_S = 600


class MeasureOptions(BaseModel):
    """How latency is measured (accuracy always uses the whole evaluation set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs: int = Field(default=50, ge=1, le=100_000)
    warmup: int = Field(default=10, ge=0, le=10_000)
    threads: int = Field(default=2, ge=1, le=256)
    # Build every step with TVM and time it; costs a build (seconds for small CNNs) per step.
    tvm: bool = True


class Latency(BaseModel):
    p50_ms: float
    p99_ms: float
    runs: int
    threads: int


class Measurement(BaseModel):
    """One row of the report: a model after some step (the original first)."""

    step: str
    params: int
    bytes: int
    weight_bytes: int
    macs: int
    flops: int
    top1: float | None = None  # 0-1, None without labels
    agreement: float | None = None  # 0-1, with the original model's predictions
    ort: Latency | None = None
    tvm: Latency | None = None
    tvm_skipped: str | None = None  # why there is no TVM latency
    changes: dict[str, Any] = Field(default_factory=dict)  # what the step's pass reported


@dataclass(frozen=True)
class Sizes:
    params: int
    bytes: int
    weight_bytes: int


def model_sizes(model: Any, coding: WeightCoding | None = None) -> Sizes:
    """Parameters, serialized bytes and initializer bytes, coded initializers at their coded size."""
    import onnx
    from onnx import numpy_helper

    coded = dict(coding.encoded) if coding else {}
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    params = weight_bytes = coded_bytes = 0
    for init in stripped.graph.initializer:
        array = numpy_helper.to_array(init)
        params += int(array.size)
        if init.name in coded:
            coded_bytes += len(coded[init.name])
            # Keep name, type and dims; the data lives in the coding instead.
            empty = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=list(init.dims))
            init.CopyFrom(empty)
        else:
            weight_bytes += int(array.nbytes)
    return Sizes(
        params=params, bytes=stripped.ByteSize() + coded_bytes, weight_bytes=weight_bytes + coded_bytes
    )


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (what is counted: see the module docstring)."""
    from edgecam.compiler.passes.backends.onnx import tensor_shapes

    try:
        shapes = tensor_shapes(model)
    except Exception as exc:  # onnx raises InferenceError and assorted others
        raise ModelImportError(f"ONNX shape inference failed, so MACs cannot be counted: {exc}") from exc
    return sum(_node_macs(node, shapes) for node in model.graph.node)


def _node_macs(node: Any, shapes: dict[str, list[int | None]]) -> int:
    if node.op_type in _CONV_OPS:
        data, weight = _CONV_OPS[node.op_type]
        kernel = _shape(node, node.input[weight], shapes)[1:]  # Cin/group × kernel per output value
        # ConvTranspose scatters every input value to Cout/group × kernel outputs.
        per = node.input[data] if node.op_type == "ConvTranspose" else node.output[0]
        return _prod(_shape(node, per, shapes)) * _prod(kernel)
    if node.op_type in _MATMUL_OPS:
        left, _ = _MATMUL_OPS[node.op_type]
        a = _shape(node, node.input[left], shapes)
        trans_a = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
        inner = a[0] if trans_a or len(a) == 1 else a[-1]
        return _prod(_shape(node, node.output[0], shapes)) * inner
    return 0


def _shape(node: Any, tensor: str, shapes: dict[str, list[int | None]]) -> list[int]:
    shape = shapes.get(tensor)
    if shape is None or any(d is None for d in shape):
        raise ModelImportError(
            f"cannot count MACs of {node.op_type} node {node.name or node.output[0]!r}: tensor {tensor!r} "
            f"has unknown shape {shape}; edgecam measures models with static shapes (batch 1)"
        )
    return [int(d) for d in shape if d is not None]


def _prod(values: Sequence[int]) -> int:
    return int(np.prod(values, dtype=np.int64))


def session(model: Any, threads: int) -> Any:
    """An ONNX Runtime CPU session on `model` with `threads` intra-op threads."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise ModelImportError(f"ONNX Runtime cannot load the model: {exc}") from exc


def typed_feeds(model: Any, feeds: Sequence[Feeds]) -> list[Feeds]:
    """Feeds cast to the dtypes the model's inputs declare (a pass may change them, e.g. to float16)."""
    from onnx import helper

    types = {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in model.graph.input}
    return [
        {name: value.astype(types.get(name, value.dtype)) for name, value in feed.items()} for feed in feeds
    ]


def predictions(model: Any, feeds: Sequence[Feeds], threads: int = 2) -> np.ndarray:
    """The argmax of the first output (flattened) for every feed, in ONNX Runtime."""
    ses = session(model, threads)
    first = ses.get_outputs()[0].name
    return np.asarray(
        [int(np.argmax(ses.run([first], feed)[0])) for feed in typed_feeds(model, feeds)], np.int64
    )


def top1(predicted: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(predicted == labels))


def agreement(predicted: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(predicted == reference))


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median and 99th-percentile wall time of `call`, in milliseconds, after `warmup` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def ort_latency(model: Any, feed: Feeds, options: MeasureOptions) -> Latency:
    ses = session(model, options.threads)
    typed = typed_feeds(model, [feed])[0]
    p50, p99 = time_calls(lambda: ses.run(None, typed), options.runs, options.warmup)
    return Latency(p50_ms=p50, p99_ms=p99, runs=options.runs, threads=options.threads)


def tvm_latency(
    model: Any,
    feed: Feeds,
    target: str,
    target_options: dict[str, Any],
    options: MeasureOptions,
    runtime: RuntimeProcess | None = None,
) -> Latency | str:
    """Build `model` for `target` untuned and time it in `runtime` (a fresh one when None); or the
    reason there is no number."""
    from edgecam.compiler.targets import create_target

    builder = create_target(target, **target_options)
    if not builder.runs_here():
        return f"this {platform.machine()} host cannot run {target} code"
    with tempfile.TemporaryDirectory(prefix="edgecam-measure-") as tmp, contextlib.ExitStack() as stack:
        if runtime is None:
            runtime = stack.enter_context(RuntimeProcess(options.threads))
        runtime.start()  # its TVM import overlaps the build below
        try:
            # What compile_model builds (to_relax), minus its metadata checks: any step can be timed.
            from tvm.relax.frontend.onnx import from_onnx

            mod = from_onnx(model, keep_params_in_input=False)
            library = Path(tmp) / builder.export(builder.build(mod), Path(tmp))
        except Exception as exc:  # TVM raises assorted error types; the report shows the reason
            return f"TVM could not build this step for {target}: {exc}"
        initializers = {init.name for init in model.graph.initializer}
        typed = typed_feeds(model, [feed])[0]
        args = [typed[v.name] for v in model.graph.input if v.name not in initializers]
        np.savez(Path(tmp) / "inputs.npz", *args)
        return runtime.time(library, Path(tmp) / "inputs.npz", options)


# The TVM runtime in its own process: TVM_NUM_THREADS takes effect (TVM reads it once, when its
# thread pool starts; its default on x86 is half the cores) and only the runtime library is loaded,
# as on a camera. One process serves every step of a run: importing TVM takes seconds.
_MARK = "EDGECAM-TIMES "


def serve_timings() -> None:
    """The runtime process (`python -m edgecam.compiler.evaluate`): one JSON job per stdin line, each
    answered with one marked line (TVM's own prints may come between)."""
    for line in sys.stdin:
        try:
            result: dict[str, Any] = {"ms": _time_job(json.loads(line))}
        except Exception as exc:  # reported to the parent, which shows it as the reason for no number
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(_MARK + json.dumps(result), flush=True)


def _time_job(job: dict[str, Any]) -> tuple[float, float]:
    """p50/p99 of the library on the saved inputs, run by edgecam/library.py: the camera's runner
    (inputs staged, outputs copied out), so the report times what a camera runs. An artifact's coded
    weights ("weights", decoded, npz) go after the inputs, through its "transform" function as at load."""
    from edgecam.datatypes import from_numpy
    from edgecam.library import CompiledLibrary
    from edgecam.model import TensorSpec

    with np.load(job["inputs"]) as data:  # np.savez's arr_0, arr_1, ...: main's inputs in order
        feed = {f"arr_{i}": data[f"arr_{i}"] for i in range(len(data.files))}
    specs = [TensorSpec(name=k, datatype=from_numpy(v.dtype), shape=list(v.shape)) for k, v in feed.items()]
    params: list[np.ndarray] = []
    if job.get("weights"):
        with np.load(job["weights"]) as data:
            params = [data[f"arr_{i}"] for i in range(len(data.files))]
    library = CompiledLibrary(Path(job["library"]), specs, params=params, transform=job.get("transform"))
    return time_calls(lambda: library.run(feed), job["runs"], job["warmup"])


class RuntimeProcess:
    """A TVM-runtime-only process that times compiled libraries; a context manager."""

    def __init__(self, threads: int, timeout_s: float = _TVM_TIMEOUT_S) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> RuntimeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def time(
        self,
        library: Path,
        inputs: Path,
        options: MeasureOptions,
        weights: Path | None = None,
        transform: str | None = None,
    ) -> Latency | str:
        """p50/p99 of the library's `main` on the saved inputs, or why they could not be measured.
        `weights`: arrays (npz) `main` takes after the inputs, through the `transform` function first
        when given (an artifact's coded weights, as a camera loads them)."""
        job = {"library": str(library), "inputs": str(inputs), "runs": options.runs, "warmup": options.warmup}
        job |= {"weights": str(weights) if weights else None, "transform": transform}
        process = self.start()
        assert process.stdin is not None  # Popen with stdin=PIPE
        process.stdin.write((json.dumps(job) + "\n").encode())
        process.stdin.flush()
        reply = self._reply(process)
        if isinstance(reply, str):
            self.close()  # dead or stuck: the next step starts a fresh process
            return reply
        if "error" in reply:
            return f"the TVM runtime failed to run the library: {reply['error']}"
        p50, p99 = reply["ms"]
        return Latency(p50_ms=p50, p99_ms=p99, runs=options.runs, threads=self.threads)

    def start(self) -> subprocess.Popen[bytes]:
        """Start the process unless it runs (TVM's import takes seconds: start it early)."""
        if self._process is None:
            env = {**os.environ, "TVM_NUM_THREADS": str(self.threads), "TVM_USE_RUNTIME_LIB": "1"}
            command = [sys.executable, "-P", "-m", "edgecam.compiler.evaluate"]
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
            )
            self._buffer = b""
        return self._process

    def _reply(self, process: subprocess.Popen[bytes]) -> dict[str, Any] | str:
        """The worker's answer line; other output (TVM's own prints) is skipped. Reads the pipe
        unbuffered so that `select` never waits for bytes already read ahead."""
        assert process.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                if line.startswith(_MARK.encode()):
                    return dict(json.loads(line[len(_MARK) :]))
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
                return f"timing the TVM library took longer than {self.timeout_s:.0f} s"
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                return f"the TVM runtime process died (exit status {process.wait()})"
            self._buffer += chunk


@dataclass
class EvalSet:
    """Preprocessed evaluation inputs and their labels (None unless every sample has one)."""

    feeds: list[Feeds]
    labels: np.ndarray | None


class Evaluator:
    """Measures models on one evaluation set; the first model measured is the agreement reference.

    A context manager: closing it stops the TVM runtime process that times every step."""

    def __init__(
        self,
        data: EvalSet,
        target: str,
        target_options: dict[str, Any] | None = None,
        options: MeasureOptions | None = None,
        on_progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        if not data.feeds:
            raise ModelImportError("the evaluation set is empty; nothing to measure accuracy or latency on")
        self.data = data
        self.target = target
        self.target_options = target_options or {}
        self.options = options or MeasureOptions()
        self.on_progress = on_progress
        self.reference: np.ndarray | None = None
        self._runtime = RuntimeProcess(self.options.threads)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the TVM runtime process (started by the first TVM measurement)."""
        self._runtime.close()

    def top1(self, model: Any) -> float | None:
        """Top-1 of `model` on the evaluation set, None without labels (PassContext.evaluate)."""
        if self.data.labels is None:
            return None
        return top1(predictions(model, self.data.feeds, self.options.threads), self.data.labels)

    def measure(
        self, step: str, model: Any, coding: WeightCoding | None = None, changes: dict[str, Any] | None = None
    ) -> Measurement:
        self.on_progress(f"{step}: size and MACs")
        sizes = model_sizes(model, coding)
        macs = count_macs(model)
        self.on_progress(f"{step}: accuracy on {len(self.data.feeds)} inputs")
        predicted = predictions(model, self.data.feeds, self.options.threads)
        if self.reference is None:
            self.reference = predicted
        self.on_progress(f"{step}: ONNX Runtime latency ({self.options.runs} runs)")
        ort = ort_latency(model, self.data.feeds[0], self.options)
        tvm: Latency | str = "not measured (--no-tvm-latency)"
        if self.options.tvm:
            self.on_progress(f"{step}: TVM build ({self.target}, untuned) and latency")
            feed = self.data.feeds[0]
            tvm = tvm_latency(model, feed, self.target, self.target_options, self.options, self._runtime)
        return Measurement(
            step=step,
            params=sizes.params,
            bytes=sizes.bytes,
            weight_bytes=sizes.weight_bytes,
            macs=macs,
            flops=2 * macs,
            top1=top1(predicted, self.data.labels),
            agreement=agreement(predicted, self.reference),
            ort=ort,
            tvm=tvm if isinstance(tvm, Latency) else None,
            tvm_skipped=tvm if isinstance(tvm, str) else None,
            changes=changes or {},
        )


if __name__ == "__main__":
    serve_timings()
