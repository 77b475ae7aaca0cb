"""Benchmark: edgecam's int8 GEMM kernels against its fp32 ones, one conv at a time, one thread.

    .venv/bin/python bench/bench_int8_kernels.py [--threads 1]

For pointwise convs of MobileNetV2/EfficientNet shapes: the fp32 conv (bias + ReLU6) and the same conv
quantized by ONNX Runtime's quantize_static (QDQ, per-channel weights, uint8 activations), with full
int8 weights and with 7-bit ones (`reduce_range`), each built for x86_64 at the demo's x86-64-v3
level. Only the packed GEMM kernels are timed (TVM's time_evaluator, best of 5 × 50 calls, random
inputs): the model's input quantize and output dequantize are not, as a camera's int8 model keeps
its activations in uint8 from layer to layer. Prints GMAC/s and the int8 / fp32 speed-ups; the
record goes to bench/results/bench_int8_kernels-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, stamp
from timing import tvm_threads

RESULTS = Path(__file__).parent / "results"
# (input channels, map size, output channels): MobileNetV2's expansions and projections, its last conv.
SHAPES = [(96, 14, 576), (576, 14, 96), (32, 56, 192), (160, 7, 960), (320, 7, 1280)]


def conv_model(path: Path, channels: int, size: int, outputs: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((outputs, channels, 1, 1)) * np.sqrt(2.0 / channels)).astype(np.float32)
    bias = (rng.standard_normal(outputs) * 0.01).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.float32(0.0), "lo"),
        numpy_helper.from_array(np.float32(6.0), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, outputs, size, size])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over a few random inputs."""

    def __init__(self, shape: list[int]) -> None:
        rng = np.random.default_rng(1)
        self.feeds = [{"x": rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(4)]
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iter, None)

    def rewind(self) -> None:
        self.iter = iter(self.feeds)


def quantized(source: Path, shape: list[int], reduce_range: bool) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = source.with_name(f"{source.stem}-int8{'-rr' if reduce_range else ''}.onnx")
    quantize_static(
        str(source),
        str(out),
        _Calibration(shape),  # duck-typed CalibrationDataReader
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return out


def gemm_ms(path: Path) -> float:
    """Milliseconds of the model's packed GEMM kernels (with their fused epilogues), built alone."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgecam.compiler.lowering.packed_gemm import COMPUTE
    from edgecam.compiler.targets import create_target

    target = create_target("x86_64", mcpu="x86-64-v3")
    tvm_target = target.tvm_target()
    module = target.prepare(from_onnx(onnx.load(str(path)), keep_params_in_input=False))
    with tvm_target:
        module = target.pipeline(tvm_target)(module)
    total = 0.0
    kernels = [
        f
        for gv, f in module.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and COMPUTE in gv.name_hint
    ]
    if not kernels:
        raise SystemExit(f"{path}: no packed GEMM kernel: nothing to time")
    rng = np.random.default_rng(2)
    for kernel in kernels:
        library = tvm.compile(
            tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target=tvm_target
        )
        args = []
        for param in kernel.params:
            shape, dtype = [int(d) for d in param.shape], str(param.dtype)
            values = rng.integers(0, 100, shape) if "int" in dtype else rng.random(shape)
            args.append(tvm.runtime.tensor(values.astype(dtype)))
        timer = library.mod.time_evaluator("main", tvm.cpu(), number=50, repeat=5)
        total += min(timer(*args).results) * 1e3
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tvm_threads(args.threads)
    import tvm

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for channels, size, outputs in SHAPES:
            shape = [1, channels, size, size]
            fp32 = conv_model(Path(work) / f"conv{channels}x{outputs}.onnx", channels, size, outputs)
            macs = size * size * channels * outputs
            times = {
                "fp32": gemm_ms(fp32),
                "int8": gemm_ms(quantized(fp32, shape, reduce_range=False)),
                "int8_7bit": gemm_ms(quantized(fp32, shape, reduce_range=True)),
            }
            row = {"shape": [channels, size, outputs], "macs": macs, "ms": times}
            row["gmacs"] = {k: macs / v / 1e6 for k, v in times.items()}
            row["speedup_over_fp32"] = {k: times["fp32"] / v for k, v in times.items() if k != "fp32"}
            rows.append(row)
            g, s = row["gmacs"], row["speedup_over_fp32"]
            print(
                f"{channels:4} → {outputs:4} on {size:3}×{size:<3} GMAC/s: fp32 {g['fp32']:5.1f}  "
                f"int8 {g['int8']:5.1f} ({s['int8']:.2f}×)  int8 7-bit {g['int8_7bit']:5.1f} "
                f"({s['int8_7bit']:.2f}×)",
                flush=True,
            )
    created, day = stamp()
    host = machine(tvm=tvm.__version__, threads=args.threads)
    record = {"created": created, "machine": host, "mcpu": "x86-64-v3", "kernels": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_int8_kernels-{day}-{host['host']}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
