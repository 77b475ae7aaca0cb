"""Benchmark: edgecam's CUDA artifacts on a real GPU against PyTorch, batch 1 (issue 5: MobileNetV2
≥ 2× faster than PyTorch eager fp32, aim 3×).

Two steps, on two machines:

    .venv/bin/python bench/bench_cuda.py prepare [--arch sm_90] [--runs 200]     # here: build the kit
    python3 bench/bench_cuda.py run --kit bench/.cuda-run --out "$OUT"            # there: on the GPU

`prepare` compiles MobileNetV2 (bench/shapes.py, random weights) and the bundled fashion CNN for cuda
`--arch` (the lent H100 is sm_90), assembles the kit (bench/device_kit.py) and prints the `device` tool
call that runs step two: its `carry` list and command.

`run` loads each artifact through edgecam's camera runtime (`TvmRuntime`: TVM in runtime-only mode, the
cubin handed to the driver, no NVRTC), checks its outputs against ONNX Runtime on the CPU, and times,
interleaved in rounds, each call ended by a CUDA synchronization:
  - edgecam end to end: `TvmRuntime.run`, numpy in and out, as a camera calls it;
  - edgecam on device: the same library through TVM's VM with the input already on the GPU;
  - PyTorch eager fp32 (TF32 off, so fp32 like TVM's kernels), end to end and on device; PyTorch eager
    with its defaults (cuDNN may use TF32); torch.compile, default and "reduce-overhead" (CUDA graphs),
    when they work (MobileNetV2 only: bench/torch_mobilenet.py mirrors its topology).
It writes bench_cuda-<date>-<host>.json to --out (copy it to bench/results/) and exits 1 when an
output disagrees with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from device_kit import RTOL, check_outputs

ROOT = Path(__file__).resolve().parents[1]
KIT = Path("bench/.cuda-run")  # relative to the checkout, as the `run` tool's carry wants it
MODELS = ("mobilenet_v2", "fashion_cnn")
ROUNDS = 4
WARMUP = 20
SAMPLES = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="here: build the kit and print the device tool call")
    prep.add_argument("--arch", default="sm_90", help="compute capability of the lent GPU (H100: sm_90)")
    prep.add_argument("--runs", type=int, default=200, help="timed runs per engine in the printed command")
    prep.add_argument("--cuda-graph", action="store_true", help="build with the cuda target's cuda_graph on")
    go = steps.add_parser("run", help="on the GPU machine: check and time")
    go.add_argument("--kit", type=Path, required=True)
    go.add_argument("--out", type=Path, required=True, help="folder for the JSON record ($OUT there)")
    go.add_argument("--runs", type=int, default=200)
    go.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    if args.step == "prepare":
        return prepare(args.arch, args.runs, args.cuda_graph)
    return run(args.kit, args.out, max(args.runs, 100), not args.no_compile)


def prepare(arch: str, runs: int, cuda_graph: bool) -> int:
    import device_kit

    kit = ROOT / KIT
    device_kit.assemble(kit)
    options = {"arch": arch, "cuda_graph": cuda_graph}
    for name in MODELS:
        build_artifact(name, options, kit / "artifacts" / name)
    (kit / "target_options.json").write_text(json.dumps(options) + "\n")  # into the run's record
    if not device_kit.fits_one_call(kit):
        return 1
    carry, command = device_kit.run_call(KIT, "bench_cuda.py", f"--runs {runs}")
    print("\ndevice tool `run` call (kind nvidia-h100-x1, timeout_s 600):")
    print(json.dumps({"carry": carry, "command": command}, indent=2))
    return 0


def build_artifact(name: str, options: dict[str, Any], out: Path) -> None:
    import device_kit
    import shapes

    from edgecam.compiler.build import compile_model

    if name == "fashion_cnn":
        from edgecam.models import fashion_cnn

        model = Path(fashion_cnn.onnx_path())
    else:
        model = shapes.write(name, ROOT / ".cache/bench")
    print(f"compiling {name} for cuda {options} ...", flush=True)
    artifact = compile_model(model, "cuda", out, target_options=options)
    print(f"  {artifact.manifest.target.device_code}, {device_kit.size_of(out) / 2**20:.1f} MiB", flush=True)


def run(kit: Path, out: Path, runs: int, with_compile: bool) -> int:
    from device_kit import edgecam_from_checkout

    edgecam_from_checkout()
    _preload_cudart()
    from edgecam.compiler.artifact import ArtifactError, load_artifact
    from edgecam.server.runtime.tvm import TvmRuntime, import_tvm_runtime

    tvm = import_tvm_runtime()  # before torch: the runtime keeps torch out of TVM's import
    nvrtc_calls = _nvrtc_tripwire()
    loaded, host_check = {}, "passed"
    for name in sorted(p.name for p in (kit / "artifacts").iterdir()):
        try:
            artifact = load_artifact(kit / "artifacts" / name)  # hashes, arch, that a GPU is visible
        except ArtifactError as exc:
            if exc.check != "device":
                raise
            # The camera's quick look (/dev/nvidia0) missed this machine's GPU: record it, and let the
            # runtime ask the CUDA driver itself.
            host_check = str(exc)
            artifact = load_artifact(kit / "artifacts" / name, check_host=False)
        started = time.perf_counter()
        loaded[name] = (artifact, TvmRuntime(artifact), time.perf_counter() - started)
    import onnxruntime as ort
    import torch
    from machine_info import machine, stamp

    when, day = stamp()
    device = tvm.cuda(0)
    record: dict[str, Any] = {
        "benchmark": "bench_cuda",
        "date": when,
        "machine": machine(
            gpu=torch.cuda.get_device_name(0),
            compute_capability=str(device.compute_version),
            cuda_driver=device.driver_version,
            torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            onnxruntime=ort.__version__,
            tvm=tvm.__version__,
        ),
        # Evidence that nothing was compiled at load: TVM ran without its compiler, and the callback a
        # library holding CUDA source calls to compile it (NVRTC) was never called.
        "tvm_runtime_only": bool(tvm.base._RUNTIME_ONLY),
        "artifact_host_check": host_check,
        "nvrtc_compile_calls": len(nvrtc_calls),
        "settings": {"batch": 1, "runs": runs, "warmup": WARMUP, "rounds": ROUNDS, "rtol": RTOL},
        "target_options": json.loads((kit / "target_options.json").read_text()),
        "models": {},
    }
    ok = True
    for name, (artifact, runtime, load_seconds) in loaded.items():
        result = bench_model(name, artifact, runtime, runs, with_compile)
        result["edgecam_load_seconds"] = round(load_seconds, 3)
        record["models"][name] = result
        ok = ok and all(check["ok"] for check in result["checks"].values())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_cuda-{day}-{record['machine']['host']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"\nwritten to {path}; outputs {'match' if ok else 'DO NOT match'} ONNX Runtime")
    return 0 if ok else 1


def bench_model(name: str, artifact: Any, runtime: Any, runs: int, with_compile: bool) -> dict[str, Any]:
    import onnxruntime as ort

    spec = artifact.manifest.inputs[0]
    rng = np.random.default_rng(0)
    feeds = [{spec.name: rng.standard_normal(spec.shape).astype(np.float32)} for _ in range(SAMPLES)]
    reference = artifact.path / "reference.onnx"
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    expected = [session.run(None, feed)[0] for feed in feeds]
    output = artifact.manifest.outputs[0].name
    checks = {"edgecam": check_outputs([runtime.run(feed)[output] for feed in feeds], expected)}
    engines = edgecam_engines(artifact, runtime, feeds[0])
    if name == "mobilenet_v2":
        torch_engines, torch_checks = pytorch_engines(reference, feeds, expected, with_compile)
        engines.update(torch_engines)
        checks.update(torch_checks)
    timings = time_engines(engines, runs)
    result: dict[str, Any] = {"device_code": artifact.manifest.target.device_code, "checks": checks}
    result["timings_ms"] = timings
    result["edgecam_gpu_profile"] = kernel_profile(engines["edgecam_on_device"])
    baseline = timings.get("torch_eager_fp32_on_device")
    if baseline and "median" in baseline:
        result["speedup_vs_torch_eager_fp32"] = {
            "on_device": round(baseline["median"] / timings["edgecam_on_device"]["median"], 2),
            "end_to_end": round(
                timings["torch_eager_fp32_end_to_end"]["median"] / timings["edgecam_end_to_end"]["median"], 2
            ),
        }
    return result


def edgecam_engines(artifact: Any, runtime: Any, feed: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    from edgecam.server.runtime.tvm import import_tvm_runtime

    tvm = import_tvm_runtime()
    device = tvm.cuda(0)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(artifact.library_path)), device)
    main = vm["main"]
    on_device = tvm.runtime.tensor(next(iter(feed.values())), device)

    def resident() -> None:
        main(on_device)
        device.sync()

    return {"edgecam_end_to_end": lambda: runtime.run(feed), "edgecam_on_device": resident}


def pytorch_engines(
    reference: Path, feeds: list[dict[str, np.ndarray]], expected: list[np.ndarray], with_compile: bool
) -> tuple[dict[str, Callable[[], Any]], dict[str, dict[str, Any]]]:
    import onnx
    import torch
    import torch_mobilenet

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TVM's kernels use no TF32
    torch.backends.cudnn.allow_tf32 = False
    net = torch_mobilenet.from_onnx(onnx.load(str(reference))).cuda()
    image = next(iter(feeds[0].values()))
    x = torch.from_numpy(image).cuda()

    def on_device(model: Callable[[Any], Any], tf32: bool = False) -> Callable[[], Any]:
        def call() -> None:
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.inference_mode():
                model(x)
            torch.cuda.synchronize()

        return call

    def end_to_end() -> Any:
        torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            return net(torch.from_numpy(image).cuda()).cpu().numpy()  # .cpu() waits for the GPU

    with torch.inference_mode():
        got = [net(torch.from_numpy(next(iter(f.values()))).cuda()).cpu().numpy() for f in feeds]
    checks = {"torch_eager_fp32": check_outputs(got, expected)}
    engines: dict[str, Callable[[], Any]] = {
        "torch_eager_fp32_end_to_end": end_to_end,
        "torch_eager_fp32_on_device": on_device(net),
        "torch_eager_default_tf32_on_device": on_device(net, tf32=True),
    }
    if with_compile:
        for label, mode in (
            ("torch_compile", "default"),
            ("torch_compile_reduce_overhead", "reduce-overhead"),
        ):
            try:
                compiled = torch.compile(net, mode=mode)
                for _ in range(3):  # compiles, then records the CUDA graph in reduce-overhead mode
                    on_device(compiled)()
                with torch.inference_mode():
                    checks[label] = check_outputs([compiled(x).cpu().numpy()], expected[:1])
                engines[label + "_on_device"] = on_device(compiled)
            except Exception as exc:  # record why, keep the rest of the run
                checks[label] = {"ok": True, "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return engines, checks


def time_engines(engines: dict[str, Callable[[], Any]], runs: int) -> dict[str, dict[str, float]]:
    """Median, p99 and mean in ms per engine: WARMUP calls each, then `runs` timed calls in ROUNDS
    interleaved rounds so that clock and thermal drift hit every engine alike."""
    for call in engines.values():
        for _ in range(WARMUP):
            call()
    samples: dict[str, list[float]] = {name: [] for name in engines}
    per_round = -(-runs // ROUNDS)
    for _ in range(ROUNDS):
        for name, call in engines.items():
            for _ in range(per_round):
                started = time.perf_counter_ns()
                call()
                samples[name].append((time.perf_counter_ns() - started) / 1e6)
    return {
        name: {
            "median": round(float(np.median(t)), 4),
            "p99": round(float(np.percentile(t, 99)), 4),
            "mean": round(float(np.mean(t)), 4),
            "runs": len(t),
        }
        for name, t in samples.items()
    }


def kernel_profile(call: Callable[[], Any], calls: int = 20) -> dict[str, Any]:
    """Kernels launched and GPU time they take per call (CUPTI, through torch.profiler): when the
    GPU time is far below the call's latency, launches and the host dominate, not the kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busiest: dict[str, float] = {}
    for event in kernels:
        busiest[event.name] = busiest.get(event.name, 0.0) + event.device_time / 1e3 / calls
    top = sorted(busiest.items(), key=lambda item: -item[1])[:5]
    return {
        "kernels_per_call": round(len(kernels) / calls, 1),
        "gpu_ms_per_call": round(sum(e.device_time for e in kernels) / 1e3 / calls, 4),
        "top_kernels_ms": {name[:80]: round(ms, 4) for name, ms in top},
    }


def _nvrtc_tripwire() -> list[int]:
    """Replace TVM's `tvm_callback_cuda_compile` with one that records each call and fails it: a
    cubin artifact must load without it. Returns the list the calls are recorded in."""
    import tvm_ffi

    calls: list[int] = []

    def compile_at_load(source: str, *rest: Any) -> bytes:
        calls.append(len(source))
        raise RuntimeError("this library holds CUDA source that TVM wants to compile at load (NVRTC)")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_at_load, override=True)
    return calls


def _preload_cudart() -> None:
    """TVM's CUDA runtime library needs libcudart.so.13; where the dynamic loader does not find it,
    load the copy the CUDA wheels installed (PyTorch's) by path, so the soname is already resolved."""
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    roots = [Path(p) for p in sys.path if p] + [Path("/usr/local/cuda/lib64")]
    for root in roots:
        found = sorted(root.glob("nvidia/**/libcudart.so.13")) or sorted(root.glob("libcudart.so.13"))
        if found:
            ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
            return


if __name__ == "__main__":
    sys.exit(main())
