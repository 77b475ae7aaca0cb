"""Benchmark: edgecam's int8 on a CPU with VNNI, the lent device machine's (issue 5: int8 ≥ 1.5× faster
than edgecam fp32 on the same model).

This project's machines (AMD znver3) have AVX2 but no VNNI, where exact int8 runs at about fp32's speed
(bench/README.md); QEMU's emulator runs no VNNI code either (7.2 and 10.0 stop at an illegal
instruction). The device machine's host CPU had AVX-512 VNNI (Intel Xeon, bench_cuda-20261125-h100.json),
so the int8 target is measured there, in two steps:

    .venv/bin/python bench/bench_cpu_device.py prepare [--mcpu x86-64-v4 --mattr +avx512vnni] [--runs 300]
    python3 bench/bench_cpu_device.py run --kit bench/.cpu-run-<model> --out "$OUT"  # there, on its CPU

`prepare` builds EfficientNet-Lite0 and MobileNetV2 (bench_targets.py's models and int8 pass: full int8
weights, calibrated on real frames) fp32 and int8 for x86_64 `--mcpu`/`--mattr` (by default what every
AVX-512 VNNI CPU has, Intel's since Cascade Lake and AMD's since Zen 4), and assembles a kit per model
(bench/device_kit.py). Each artifact travels as its library and a manifest listing only that: its
reference ONNX stays here (one call carries 64 MiB). What the outputs must be travels instead, for
`SAMPLES` real frames: ONNX Runtime's (fp32; int8 with exact kernels) and this machine's AVX2 build of
the same int8 model (the VNNI build adds the same integers, so it should agree).

It also carries, where they fit, int8 and fp32 builds for CPUs with AVX-VNNI but no AVX-512 (x86-64-v3
+ avxvnni: Intel's Alder Lake and later client cores, N100-class boxes among them), which the device
CPU runs too.

`run` loads each artifact as a camera does (a CPU without the features the build needs refuses it,
naming them: recorded, model skipped), checks its outputs, then times edgecam fp32 and int8 and ONNX
Runtime fp32 and int8 (MobileNetV2: its fp32 ONNX rebuilt there from bench/shapes.py and checked by
hash; EfficientNet-Lite0's stays here) with `--threads` threads each, taking turns in rounds. It writes
bench_cpu_device-<model>-<date>-<host>.json to --out (copy it to bench/results/) and exits 1 when an output is
off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from device_kit import RTOL, check_outputs

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / ".cache/bench/cpu-device"
MODELS = ("efficientnet_lite0", "mobilenet_v2")
SAMPLES = 2  # frames whose outputs are checked there (each input travels as 0.6 MB of float32)
ROUNDS = 12
# TVM's compiler-side Python that a runtime-only `import tvm` never reaches (tvm/__init__.py imports
# script, tirx, backend, target, te, ...; relax only with the compiler library). Checked by running
# this script's `run` here on a kit built for this CPU.
_COMPILER_PYTHON = frozenset({"relax", "s_tir", "topi"})
# Builds for CPUs with AVX-VNNI but no AVX-512 (Intel's Alder Lake and later client cores, N100-class
# boxes among them), run on the device CPU (which has both) where they fit the call, in this order:
# name → (model, target options). The "fp32" and "int8" builds are for `--mcpu`/`--mattr`.
AVX2_BUILDS = {
    "int8_avx_vnni": ("int8", {"mcpu": "x86-64-v3", "mattr": ["+avxvnni"]}),
    "fp32_avx2": ("fp32", {"mcpu": "x86-64-v3", "mattr": []}),
}
# Engine pairs whose ratio of medians the record reports (first / second), where both ran.
RATIOS = (
    ("edgecam_fp32", "edgecam_int8"),
    ("edgecam_fp32_avx2", "edgecam_int8_avx_vnni"),
    ("edgecam_fp32", "ort_fp32"),
    ("edgecam_int8", "ort_int8"),
)


def kit_path(model: str) -> Path:
    """A model's kit, relative to the checkout as the `run` tool's carry wants it: one call per model,
    because a call carries 64 MiB and EfficientNet-Lite0's fp32 library alone takes 19."""
    return Path(f"bench/.cpu-run-{model}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="here: build the kits and print the device tool calls")
    prep.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    prep.add_argument("--mcpu", default="x86-64-v4", help="LLVM CPU (or level) to build for")
    prep.add_argument("--mattr", nargs="*", default=["+avx512vnni"], help="LLVM features added to it")
    prep.add_argument("--runs", type=int, default=300, help="timed runs per engine in the printed command")
    prep.add_argument("--threads", type=int, default=2, help="threads per engine in the printed command")
    go = steps.add_parser("run", help="on the device machine: check and time")
    go.add_argument("--kit", type=Path, required=True)
    go.add_argument("--out", type=Path, required=True, help="folder for the JSON record ($OUT there)")
    go.add_argument("--runs", type=int, default=300)
    go.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.step == "prepare":
        target = {"mcpu": args.mcpu, "mattr": args.mattr}
        return max(prepare(name, target, args.runs, args.threads) for name in args.models)
    return run(args.kit, args.out, max(args.runs, 100), args.threads)


def prepare(name: str, target: dict[str, Any], runs: int, threads: int) -> int:
    """Build `name`'s kit and print its device call; 1 when it would not fit one call."""
    import device_kit
    from bench_targets import calibration, int8_model, model_path

    from edgecam.compiler.artifact import sha256_file
    from edgecam.compiler.frontends.onnx import load_onnx

    kit = ROOT / kit_path(name)
    device_kit.assemble(kit, python_left_out=_COMPILER_PYTHON)
    settings: dict[str, Any] = {"model": name, "target_options": target, "onnx_sha256": {}}
    models = {"fp32": model_path(name)}
    models["int8"] = int8_model(name, models["fp32"])
    feeds = calibration(name, load_onnx(models["fp32"]))[:SAMPLES]
    expected = {f"input_{i}": next(iter(feed.values())) for i, feed in enumerate(feeds)}
    for kind, model in models.items():
        artifact = build(model, target, WORKDIR / f"{name}-{kind}-device")
        carry_library(artifact, kit / "artifacts" / kind)
        expected |= outputs(f"ort_{kind}", ort_call(model, threads), feeds)
        settings["onnx_sha256"][kind] = sha256_file(model)
    here = build(models["int8"], {"mcpu": "x86-64-v3"}, WORKDIR / f"{name}-int8-x86-64-v3")
    expected |= outputs("edgecam_int8_avx2", edgecam_call(here), feeds)
    np.savez(kit / "expected.npz", **expected)
    # What else fits the call: the AVX-VNNI int8 build, ONNX Runtime's int8 peer (MobileNetV2's fp32
    # one is rebuilt there), the AVX2 fp32 build to compare the AVX-VNNI one with.
    extras = [("int8_avx_vnni", AVX2_BUILDS["int8_avx_vnni"]), ("int8.onnx", None)]
    extras.append(("fp32_avx2", AVX2_BUILDS["fp32_avx2"]))
    for extra, build_of in extras:
        room = device_kit.CARRY_LIMIT - device_kit.size_of(kit) - device_kit.checkout_bytes() - 2**20
        if build_of is None:
            if models["int8"].stat().st_size < room:
                shutil.copy2(models["int8"], kit / extra)
            continue
        kind, options = build_of
        artifact = build(models[kind], options, WORKDIR / f"{name}-{extra}")
        if (artifact.path / artifact.manifest.library).stat().st_size < room:
            carry_library(artifact, kit / "artifacts" / extra)
    (kit / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    if not device_kit.fits_one_call(kit):
        return 1
    call = device_kit.run_call(kit_path(name), "bench_cpu_device.py", f"--runs {runs} --threads {threads}")
    print(f"\ndevice tool `run` call for {name} (timeout_s 600):")
    print(json.dumps({"carry": call[0], "command": call[1]}, indent=2))
    return 0


def build(model: Path, options: dict[str, Any], out: Path) -> Any:
    from edgecam.compiler.build import compile_model

    print(f"compiling {model.name} for x86_64 {options} ...", flush=True)
    return compile_model(model, "x86_64", out, target_options=options)


def carry_library(artifact: Any, dest: Path) -> None:
    """The artifact's library and a manifest listing only it (what `load_artifact` then verifies)."""
    manifest = artifact.manifest
    library = manifest.library
    dest.mkdir(parents=True)
    shutil.copy2(artifact.path / library, dest / library)
    lean = manifest.model_copy(update={"files": {library: manifest.files[library]}})
    (dest / "manifest.json").write_text(lean.model_dump_json(indent=1) + "\n")


def ort_session(model: Path, threads: int) -> Any:
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    return ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])


def edgecam_call(artifact: Any) -> Any:
    from edgecam.server.runtime.tvm import TvmRuntime

    runtime = TvmRuntime(artifact)
    return lambda feed: [runtime.run(feed)[artifact.manifest.outputs[0].name]]


def ort_call(model: Path, threads: int) -> Any:
    session = ort_session(model, threads)
    return lambda feed: session.run(None, feed)


def outputs(label: str, run_one: Any, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{label: [samples, ...output shape]}: the first output `run_one(feed)` returns, per feed."""
    return {label: np.stack([np.asarray(run_one(feed)[0]) for feed in feeds])}


def run(kit: Path, out: Path, runs: int, threads: int) -> int:
    os.environ["TVM_NUM_THREADS"] = str(threads)  # before TVM's pool starts: as ORT's intra-op threads
    from device_kit import edgecam_from_checkout

    edgecam_from_checkout()
    import onnxruntime as ort
    from machine_info import machine, stamp

    from edgecam.compiler.artifact import ArtifactError, load_artifact
    from edgecam.server.runtime.tvm import TvmRuntime, import_tvm_runtime

    tvm = import_tvm_runtime()
    settings = json.loads((kit / "settings.json").read_text())
    name = settings["model"]
    when, day = stamp()
    record: dict[str, Any] = {
        "benchmark": "bench_cpu_device",
        "model": name,
        "date": when,
        "machine": machine(onnxruntime=ort.__version__, tvm=tvm.__version__, threads=threads),
        "tvm_runtime_only": bool(tvm.base._RUNTIME_ONLY),
        "settings": {**settings, "runs": runs, "rounds": ROUNDS, "samples": SAMPLES, "rtol": RTOL},
    }
    runtimes, refused = {}, {}
    for folder in sorted((kit / "artifacts").iterdir()):
        try:
            artifact = load_artifact(folder)
        except ArtifactError as exc:  # e.g. a CPU without VNNI: refused before any instruction runs
            refused[folder.name] = str(exc)
            continue
        runtimes[folder.name] = (artifact, TvmRuntime(artifact))
    if refused:
        record["refused_at_load"] = refused
    ok = {"fp32", "int8"} <= set(runtimes)
    if ok:
        record |= bench_model(kit, runtimes, settings, runs, threads)
        ok = all(check["ok"] for check in record["checks"].values())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_cpu_device-{name}-{day}-{record['machine']['host']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print(f"\nwritten to {path}; " + ("outputs match" if ok else "refused or outputs DO NOT match"))
    return 0 if ok else 1


def bench_model(
    kit: Path, runtimes: dict[str, Any], settings: dict[str, Any], runs: int, threads: int
) -> dict[str, Any]:
    from timing import in_turns, summary

    expected = dict(np.load(kit / "expected.npz"))
    artifact = runtimes["fp32"][0]
    input_name, output_name = artifact.manifest.inputs[0].name, artifact.manifest.outputs[0].name
    feeds = [{input_name: expected[f"input_{i}"]} for i in range(SAMPLES)]
    got = {kind: np.stack([rt.run(f)[output_name] for f in feeds]) for kind, (_, rt) in runtimes.items()}
    # fp32 builds against ONNX Runtime; int8 ones against this machine's AVX2 build of the same model,
    # which adds the same integers (ONNX Runtime rounds its requantization its own way, one step apart:
    # reported, not checked).
    checks = {
        f"edgecam_{kind}": _check(
            got[kind], expected["ort_fp32" if kind.startswith("fp32") else "edgecam_int8_avx2"]
        )
        for kind in got
    }
    int8_vs_ort = {"max_abs_diff": float(np.abs(got["int8"] - expected["ort_int8"]).max())}
    engines = {f"edgecam_{kind}": _caller(rt, feeds[0]) for kind, (_, rt) in runtimes.items()}
    for kind, session in ort_sessions(kit, settings, threads).items():
        engines[f"ort_{kind}"] = lambda session=session: session.run(None, feeds[0])
    samples = in_turns(engines, runs, ROUNDS)
    timings = {engine: summary(ms) for engine, ms in samples.items()}
    median = {engine: t["median_ms"] for engine, t in timings.items()}
    ratios = {f"{a}_over_{b}": median[a] / median[b] for a, b in RATIOS if a in median and b in median}
    return {"checks": checks, "int8_vs_ort_int8": int8_vs_ort, "timings_ms": timings, "ratios": ratios}


def ort_sessions(kit: Path, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """ONNX Runtime sessions of the models that are there: MobileNetV2's fp32 rebuilt from its code
    (when its hash matches the compiled one), the int8 ONNX file the kit carries."""
    import shapes

    from edgecam.compiler.artifact import sha256_file

    sessions = {}
    if settings["model"] in shapes.SHAPES:
        rebuilt = shapes.write(settings["model"], Path("/tmp/edgecam-bench"))
        if sha256_file(rebuilt) == settings["onnx_sha256"]["fp32"]:
            sessions["fp32"] = ort_session(rebuilt, threads)
    if (kit / "int8.onnx").is_file():
        sessions["int8"] = ort_session(kit / "int8.onnx", threads)
    return sessions


def _caller(runtime: Any, feed: dict[str, np.ndarray]) -> Any:
    return lambda: runtime.run(feed)


def _check(got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """device_kit.check_outputs over the samples, and how often both pick the same top-1 class."""
    top1 = [array.reshape(len(array), -1).argmax(1) for array in (got, expected)]
    return {**check_outputs(got, expected), "same_top1": float(np.mean(top1[0] == top1[1]))}


if __name__ == "__main__":
    sys.exit(main())
