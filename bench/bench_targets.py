"""Benchmark: what edgecam builds for this CPU against ONNX Runtime, fp32 and int8, same run.

    .venv/bin/python bench/bench_targets.py [--models fashion_cnn mobilenet_v2 resnet18 efficientnet_lite0]
                                            [--runs 100] [--rounds 12] [--threads 2] [--no-int8] [--mcpu host]
                                            [--reduce-range]

For each model: ONNX Runtime (CPU provider, `--threads` intra-op threads, exact int8 kernels) and the
edgecam artifact (`compile_model` for x86_64 at the portable level `edgecam demo` uses, or `--mcpu`:
tuned when a tuning database for the model and level exists, else edgecam's untuned schedules; run
through the camera's runtime)
on the same input, fp32 and int8 (edgecam's `int8` pass, calibrated on real frames; with
`--reduce-range` its 7-bit weights, which x86 CPUs without VNNI compute with vpmaddubsw). Engines run
interleaved in rounds so load hits them alike; median and p99 over `--runs`, GFLOP/s (2 × MACs /
median) and its fraction of this CPU's theoretical peak. MobileNetV2 and ResNet-18 are built in code
with random weights (bench/shapes.py); EfficientNet-Lite0 is used when exported to .cache/bench
(bench_int8_efficientnet.py does that).
The record goes to bench/results/bench_targets-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import shapes
from machine_info import machine, peak_gflops, save_record, stamp
from timing import in_turns, tvm_threads

WORKDIR = Path(".cache/bench")


def model_path(name: str) -> Path:
    if name == "fashion_cnn":
        from edgecam.models import fashion_cnn

        return Path(fashion_cnn.onnx_path())
    if name == "efficientnet_lite0":
        path = WORKDIR / "efficientnet_lite0.onnx"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run bench/bench_int8_efficientnet.py once to export it")
        return path
    return shapes.write(name, WORKDIR)


def calibration(name: str, source: Any) -> list[dict[str, np.ndarray]]:
    """Real frames through the model's preprocessing: Fashion-MNIST for the bundled CNN, else street
    video frames (OpenCV's vtest.avi) and scikit-image photos."""
    from edgecam.compiler.datasets import (
        ConcatData,
        FashionMnistData,
        SkimageData,
        VideoData,
        load_dataset,
        to_feeds,
    )
    from edgecam.models.efficientnet_lite0.opencv_doc import video_path

    if name == "fashion_cnn":
        config: Any = FashionMnistData(kind="fashion_mnist", split="train", limit=256)
    else:
        video = video_path()
        config = ConcatData(
            kind="concat",
            parts=[
                SkimageData(kind="skimage"),
                VideoData(kind="video", path=video, start=400, every=4, limit=64),
            ],
        )
    return to_feeds(load_dataset(config), source.preprocessing, source.inputs[0].name)


def int8_config(reduce_range: bool) -> dict[str, Any]:
    return {"kind": "int8", "reduce_range": True} if reduce_range else {"kind": "int8"}


def int8_model(name: str, path: Path, reduce_range: bool = False) -> Path:
    import onnx

    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config

    # Quantized afresh on every run (seconds): a cached file would outlive a change to the int8 pass.
    out = WORKDIR / f"{name}-int8{'-rr' if reduce_range else ''}.onnx"
    source = load_onnx(path)
    feeds = calibration(name, source)
    int8 = create_pass(parse_pass_config(int8_config(reduce_range)))
    result = int8.apply(source.proto, PassContext(feeds, WORKDIR))
    onnx.save(result.model, str(out))
    return out


def edgecam_runner(
    path: Path, out: Path, options: dict[str, Any]
) -> tuple[Callable[[dict[str, np.ndarray]], object], dict[str, Any]]:
    from edgecam.compiler.build import compile_model
    from edgecam.server.runtime import load_model

    started = time.perf_counter()
    artifact = compile_model(path, "x86_64", out, target_options=options)
    seconds = time.perf_counter() - started
    model = load_model(artifact.path)
    manifest = artifact.manifest
    info = {
        "compile_seconds": round(seconds, 1),
        "verification_max_abs_diff": manifest.verification.max_abs_diff if manifest.verification else None,
        "measurements": manifest.measurements,
    }
    return model.runtime.run, info


def ort_runner(path: Path, threads: int) -> Callable[[dict[str, np.ndarray]], object]:
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def target_options(mcpu: str) -> dict[str, Any]:
    """ "portable": as `edgecam demo` builds, for the x86-64 level the committed tuning databases are
    for (x86-64-v3 where the CPU has it); "host": for this CPU (AVX-512, VNNI where it has them);
    else an LLVM CPU name."""
    from edgecam.compiler.targets import x86

    if mcpu == "portable":
        return x86.portable_options()
    return {} if mcpu == "host" else {"mcpu": mcpu}


def bench_model(name: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    from edgecam.compiler.evaluate import count_macs
    from edgecam.compiler.frontends.onnx import load_onnx

    path = model_path(name)
    source = load_onnx(path)
    macs = count_macs(source.proto)
    feed = calibration(name, source)[0]
    runners: dict[str, Callable[[dict[str, np.ndarray]], object]] = {
        "ort_fp32": ort_runner(path, args.threads)
    }
    builds: dict[str, Any] = {}
    print(f"{name}: compiling fp32 ({macs / 1e6:.0f} M MACs)", flush=True)
    options = target_options(args.mcpu)
    runners["edgecam_fp32"], builds["fp32"] = edgecam_runner(path, WORKDIR / f"{name}-fp32-artifact", options)
    if args.int8:
        quantized = int8_model(name, path, args.reduce_range)
        runners["ort_int8"] = ort_runner(quantized, args.threads)
        print(f"{name}: compiling int8", flush=True)
        runners["edgecam_int8"], builds["int8"] = edgecam_runner(
            quantized, WORKDIR / f"{name}-int8-artifact", options
        )
    calls = {engine: (lambda run=run: run(feed)) for engine, run in runners.items()}
    samples = in_turns(calls, args.runs, args.rounds)
    results = {}
    for engine, ms in samples.items():
        median = float(np.median(ms))
        gflops = 2 * macs / (median / 1000.0) / 1e9
        results[engine] = {
            "median_ms": median,
            "p99_ms": float(np.percentile(ms, 99)),
            "runs": len(ms),
            "gflops": gflops,
            "peak_fraction": gflops / peak,
        }
    ratios = {
        "edgecam_fp32_over_ort_fp32": results["edgecam_fp32"]["median_ms"] / results["ort_fp32"]["median_ms"]
    }
    if args.int8:
        ratios["edgecam_int8_over_ort_int8"] = (
            results["edgecam_int8"]["median_ms"] / results["ort_int8"]["median_ms"]
        )
        ratios["edgecam_fp32_over_edgecam_int8"] = (
            results["edgecam_fp32"]["median_ms"] / results["edgecam_int8"]["median_ms"]
        )
    return {"macs": macs, "results": results, "ratios": ratios, "builds": builds}


# What issue 5 asks of each model, from the ratios above: ratio name -> (op, bound, what it is).
TARGETS = {
    "edgecam_fp32_over_ort_fp32": ("<=", 1.0, "edgecam fp32 time over ONNX Runtime fp32"),
    "edgecam_fp32_over_edgecam_int8": (">=", 1.5, "edgecam int8 speed-up over edgecam fp32"),
}


def issue_targets(models: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's `targets`: one line per model and ratio the issue bounds."""
    return [
        {"name": f"{name}: {what}", "value": value, "op": op, "bound": bound, "unit": "ratio"}
        for name, entry in models.items()
        for ratio, (op, bound, what) in TARGETS.items()
        if (value := entry["ratios"].get(ratio)) is not None
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["fashion_cnn", "mobilenet_v2", "resnet18"])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12, help="engines take turns this many times")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--mcpu", default="portable", help="portable (the demo's level), host, or an LLVM CPU"
    )
    parser.add_argument("--reduce-range", action="store_true", help="int8 with 7-bit weights")
    args = parser.parse_args()
    tvm_threads(args.threads)  # both engines compute with the same number of threads

    import onnxruntime
    import tvm

    host = machine(onnxruntime=onnxruntime.__version__, tvm=tvm.__version__, threads=args.threads)
    peak = peak_gflops(args.threads)
    models = {name: bench_model(name, args, peak) for name in args.models}
    created = stamp()[0]
    record = {
        "created": created,
        "machine": host,
        "peak_gflops": peak,
        "runs": args.runs,
        "rounds": args.rounds,
        "mcpu": args.mcpu,
        "int8_pass": int8_config(args.reduce_range),
        "models": models,
        "targets": issue_targets(models),
    }
    print(f"\ntheoretical fp32 peak of {args.threads} cores: {peak:.0f} GFLOP/s")
    for name, entry in models.items():
        for engine, r in entry["results"].items():
            print(
                f"{name:18} {engine:13} median {r['median_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
                f"{r['gflops']:6.1f} GFLOP/s ({r['peak_fraction']:.1%} of peak)"
            )
        print("  " + "  ".join(f"{k} {v:.2f}×" for k, v in entry["ratios"].items()))
    suffix = (
        ("" if args.mcpu == "portable" else f"-{args.mcpu}")
        + ("" if args.threads == 2 else f"-t{args.threads}")
        + ("-rr" if args.reduce_range else "")
    )
    save_record("bench_targets", record, suffix)


if __name__ == "__main__":
    main()
