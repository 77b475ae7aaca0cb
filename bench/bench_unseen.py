"""Benchmark: edgecam's untuned fp32 build against ONNX Runtime on architectures no schedule was written
for (bench/unseen_nets.py: EfficientNet-B0, MobileNetV3, ResNeXt, DenseNet, SqueezeNet, ShuffleNetV2,
RegNetY, GhostNet, GoogLeNet; random weights, 224×224, opset 17), same run.

    .venv/bin/python bench/bench_unseen.py [--networks NAME ...] [--runs 48] [--rounds 12] [--threads 2]

Each network is compiled with `compile_model` for x86_64 at this host's CPU, untuned (no tuning
database), and run through the camera's runtime; ONNX Runtime runs the same model (CPU provider,
`--threads` intra-op threads) on the same input. The engines take turns in `--rounds` rounds, so the
shared machine's drift reaches both alike. For every network where edgecam is slower, both engines are
profiled: edgecam per fused kernel (the VM's instrument hook, wall time of each call), ONNX Runtime per
operator (its own profiler), and the costliest of each is listed.
The record goes to bench/results/bench_unseen-<date>-<host>.json, with targets: each network's
edgecam/ORT median ratio ≤ 1.0 and their geometric mean ≤ 0.9.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import unseen_nets
from machine_info import machine, save_record, stamp
from timing import in_turns, summary, tvm_threads

WORKDIR = Path(".cache/bench/unseen")
PROFILE_CALLS = 10


def compile_untuned(path: Path, out: Path) -> tuple[Any, dict[str, Any]]:
    """The artifact for this host, without a tuning database, and what its build and check recorded."""
    from edgecam.compiler.build import compile_model

    started = time.perf_counter()
    artifact = compile_model(path, "x86_64", out, tuned=False)
    seconds = time.perf_counter() - started
    verification = artifact.manifest.verification
    compared = [c.model_dump() for c in verification.compared] if verification else []
    return artifact, {"compile_seconds": round(seconds, 1), "verification": compared}


def edgecam_kernel_profile(library: Path, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Milliseconds per call of each kernel (fused function) of the library, costliest first: wall time
    around each call, through the VM's instrument hook. The VM then returns to Python around every
    kernel while TVM's pool threads spin, so on a loaded machine the sum exceeds the uninstrumented
    run's time (the record keeps both): a ranking, not a timing."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    started: dict[str, float] = {}
    totals: dict[str, float] = defaultdict(float)

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            started[symbol] = time.perf_counter()
        else:
            totals[symbol] += time.perf_counter() - started[symbol]
        return 0  # VMInstrumentReturnKind.NoOp: run the call as usual

    args = [tvm.runtime.tensor(value, tvm.cpu()) for value in feed.values()]
    vm["main"](*args)  # warm: first calls allocate
    vm.set_instrument(tvm.runtime.convert(instrument))
    for _ in range(PROFILE_CALLS):
        vm["main"](*args)
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return {name: 1000 * seconds / PROFILE_CALLS for name, seconds in ranked if not name.startswith("vm.")}


def by_operator(kernels: dict[str, float]) -> dict[str, float]:
    """Kernel times summed per operator mix: the numbers TVM gives kernels of one mix at different shapes
    (fused_conv2d_add9_relu) dropped, costliest first."""
    totals: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        totals[re.sub(r"(?<=[a-z])\d+(?=_|$)", "", name)] += ms
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def ort_operator_profile(path: Path, feed: dict[str, np.ndarray], threads: int) -> dict[str, float]:
    """Milliseconds per call of each ONNX operator type in ONNX Runtime's own profile, costliest first."""
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        for _ in range(PROFILE_CALLS):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000.0  # µs → ms
    calls = PROFILE_CALLS + 1
    return {op: ms / calls for op, ms in sorted(totals.items(), key=lambda item: -item[1])}


def bench_network(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench_targets import ort_runner

    from edgecam.compiler.evaluate import count_macs
    from edgecam.server.runtime import load_model

    path = unseen_nets.write(name, WORKDIR)
    import onnx

    macs = count_macs(onnx.load(str(path)))
    print(f"{name}: compiling ({macs / 1e6:.0f} M MACs)", flush=True)
    artifact, build = compile_untuned(path, WORKDIR / f"{name}-artifact")
    camera = load_model(artifact.path).runtime
    feed = {"image": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}
    ort_run = ort_runner(path, args.threads)
    # Many short turns (2 warm-up calls each): the other users' load on the shared VM comes in bursts
    # of seconds, which a few long turns let fall on one engine.
    samples = in_turns(
        {"ort": lambda: ort_run(feed), "edgecam": lambda: camera.run(feed)}, args.runs, args.rounds, warmup=2
    )
    results = {engine: summary(ms) for engine, ms in samples.items()}
    ratio = results["edgecam"]["median_ms"] / results["ort"]["median_ms"]
    entry: dict[str, Any] = {"macs": macs, "results": results, "ratio": ratio, "build": build}
    print(f"  ort {results['ort']['median_ms']:.1f} ms, edgecam {results['edgecam']['median_ms']:.1f} ms: "
          f"{ratio:.2f}x", flush=True)  # fmt: skip
    if ratio > 1.0 or args.profile_all:
        kernels = edgecam_kernel_profile(artifact.library_path, feed)
        operators = ort_operator_profile(path, feed, args.threads)
        mixes = by_operator(kernels)
        entry["profile"] = {
            "edgecam_profiled_ms_per_call": sum(kernels.values()),
            "ort_profiled_ms_per_call": sum(operators.values()),
            "edgecam_ms_per_operator": dict(list(mixes.items())[:12]),
            "edgecam_ms_per_kernel": dict(list(kernels.items())[:12]),
            "ort_ms_per_operator": dict(list(operators.items())[:8]),
        }
        top = next(iter(mixes.items()), ("none", 0.0))
        entry["costliest_edgecam_kernel"] = {"name": top[0], "ms": top[1]}
        print(f"  costliest edgecam operator {top[0]} {top[1]:.2f} ms; ORT's top op "
              f"{next(iter(operators.items()), ('none', 0.0))}", flush=True)  # fmt: skip
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="*", default=list(unseen_nets.NETWORKS))
    parser.add_argument("--runs", type=int, default=48, help="timed calls per engine and network")
    parser.add_argument("--rounds", type=int, default=12, help="engines take turns this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profile-all", action="store_true", help="profile every network, not only slower ones"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.networks) - set(unseen_nets.NETWORKS))
    if unknown:
        raise SystemExit(f"unknown networks {unknown}; choose from {sorted(unseen_nets.NETWORKS)}")
    tvm_threads(args.threads)  # both engines compute with the same number of threads

    import onnxruntime
    import tvm

    host = machine(onnxruntime=onnxruntime.__version__, tvm=tvm.__version__, threads=args.threads)
    networks = {name: bench_network(name, args) for name in args.networks}
    ratios = [entry["ratio"] for entry in networks.values()]
    geomean = float(np.exp(np.mean(np.log(ratios))))
    targets = [
        {"name": f"{name}_edgecam_over_ort", "value": entry["ratio"], "op": "<=", "bound": 1.0, "unit": "x"}
        for name, entry in networks.items()
    ]
    targets.append(
        {"name": "geomean_edgecam_over_ort", "value": geomean, "op": "<=", "bound": 0.9, "unit": "x"}
    )
    slower = {
        name: entry["costliest_edgecam_kernel"]
        for name, entry in networks.items()
        if entry["ratio"] > 1.0 and "costliest_edgecam_kernel" in entry
    }
    record = {
        "created": stamp()[0],
        "machine": host,
        "build": "compile_model x86_64, this host's CPU, untuned (tuned=False)",
        "runs": args.runs,
        "rounds": args.rounds,
        "networks": networks,
        "slower_than_ort": slower,
        "targets": targets,
    }
    print()
    for name, entry in networks.items():
        r = entry["results"]
        costliest = f"  costliest: {slower[name]['name']}" if name in slower else ""
        print(f"{name:20} ort {r['ort']['median_ms']:7.1f} ms  edgecam {r['edgecam']['median_ms']:7.1f} ms  "
              f"{entry['ratio']:.2f}x{costliest}")  # fmt: skip
    print(f"geometric mean edgecam/ORT: {geomean:.2f}x")
    save_record("bench_unseen", record, "" if args.threads == 2 else f"-t{args.threads}")


if __name__ == "__main__":
    main()
