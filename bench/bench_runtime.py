"""Benchmark: edgecam's TVM artifact against ONNX Runtime, and gRPC overhead over in-process inference.

    .venv/bin/python bench/bench_runtime.py [--runs 500] [--rounds 10] [--threads 2]

Everything is measured in one run on one machine: ONNX Runtime (CPU provider, `--threads` intra-op
threads) and the TVM artifact `edgecam demo` builds (through the camera's runtime) on the same
preprocessed sample images, and the same artifact through `edgecam serve` over a real gRPC socket
(and a ServerLive round trip: the transport alone), and ServerLive on a lean grpc.aio server that
does nothing else (bench/lean_grpc.py: Python gRPC's own floor), all taking turns in `--rounds` rounds.
Results go to bench/results/ with machine and date.
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import lean_grpc
import numpy as np
from machine_info import cpu_model, save_record
from timing import in_turns, summary, tvm_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10, help="the two engines take turns this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = parser.parse_args()
    tvm_threads(args.threads)  # both engines compute with the same number of threads

    import onnxruntime as ort

    from edgecam.client.client import EdgecamClient
    from edgecam.demo import cached_artifact
    from edgecam.models import fashion_cnn
    from edgecam.preprocessing import preprocess
    from edgecam.server.launcher import launch
    from edgecam.server.runtime import load_model

    artifact = cached_artifact(args.workdir)
    model = load_model(artifact)
    images, _ = fashion_cnn.load_samples()
    inputs = [preprocess(image, model.preprocessing) for image in images[:64]]
    name = model.inputs[0].name

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(fashion_cnn.onnx_path()), options, providers=["CPUExecutionProvider"])
    cycle = iter(range(10**9))

    def next_input() -> np.ndarray:
        return inputs[next(cycle) % len(inputs)]

    server = launch(["--model", str(artifact), "--log-level", "WARNING"])
    lean, lean_address = lean_grpc.start()
    try:
        with EdgecamClient(server.grpc_address) as client, EdgecamClient(lean_address) as lean_client:
            client.wait_ready()
            # All in turns, so the shared VM's drifting speed reaches the served run and its
            # in-process peer alike; grpc_live is the transport alone (ServerLive, no model).
            engines = {
                "onnxruntime": lambda: session.run(None, {name: next_input()}),
                "tvm": lambda: model.runtime.run({name: next_input()}),
                "grpc_tvm": lambda: client.infer(model.name, {name: next_input()}),
                "grpc_live": client.live,
                "grpc_lean_live": lean_client.live,
            }
            samples = in_turns(engines, args.runs, args.rounds)
    finally:
        server.stop()
        lean.kill()
    results = {engine: summary(ms) for engine, ms in samples.items()}

    ratios = {
        "tvm_over_onnxruntime": results["tvm"]["median_ms"] / results["onnxruntime"]["median_ms"],
        "grpc_overhead_ms": results["grpc_tvm"]["median_ms"] - results["tvm"]["median_ms"],
        # What edgecam adds to Python gRPC's own price for a call (the lean server's ServerLive).
        "grpc_overhead_over_lean_ms": results["grpc_tvm"]["median_ms"]
        - results["tvm"]["median_ms"]
        - results["grpc_lean_live"]["median_ms"],
    }
    record = {
        "benchmark": "bench_runtime",
        "model": model.name,
        "target": model.platform,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "onnxruntime_threads": args.threads,
            "tvm_threads": args.threads,
        },
        "rounds": args.rounds,
        "results": results,
        "ratios": ratios,
        # Issue 18: the gRPC round trip may add at most 0.4 ms to the in-process run (medians, same run).
        "targets": [
            {
                "name": "gRPC ModelInfer round trip over the in-process TVM run (median)",
                "value": ratios["grpc_overhead_ms"],
                "op": "<=",
                "bound": 0.4,
                "unit": "ms",
            }
        ],
    }
    for label, r in results.items():
        print(f"{label:<12} median {r['median_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms   ({r['runs']} runs)")
    print(f"TVM / ONNX Runtime median latency: {ratios['tvm_over_onnxruntime']:.2f}x")
    print(f"gRPC round trip over in-process TVM: +{ratios['grpc_overhead_ms']:.3f} ms (median)")
    print(
        f"  a lean grpc.aio server's ServerLive: {results['grpc_lean_live']['median_ms']:.3f} ms; "
        f"edgecam adds {ratios['grpc_overhead_over_lean_ms']:+.3f} ms"
    )
    save_record("bench_runtime", record)


if __name__ == "__main__":
    main()
