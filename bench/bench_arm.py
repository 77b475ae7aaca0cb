"""Benchmark: instructions per inference on emulated ARM cores, edgecam's aarch64 builds (fp32, int8)
against ONNX Runtime's aarch64 build on the same models, counted under qemu-user by a TCG plugin.

    .venv/bin/python bench/bench_arm.py [--models fashion_cnn mobilenet_v2] [--cores cortex-a53 cortex-a76]

Wall time under qemu does not measure an ARM core; the number of guest instructions executed does
not depend on the host or its load. It is no cycle count either (cache misses, issue width and each
instruction's cost are not in it), but an in-order core such as the Cortex-A53 spends its time
roughly in proportion. The plugin (bench/arm_count/count_insns.c, built here with the host's gcc:
Debian ships neither qemu's contrib plugins nor its plugin header) adds each translated block's
instruction count to a counter every time the block runs.

Each engine runs on one thread (the plugin's counter is not atomic), once with one inference and once
with 1 + EXTRA on the same input: the difference over EXTRA is the count per inference, without
loading the runtime and the model. edgecam: its aarch64 runner (compiler/targets/arm_emulation.py)
on the library compile_model built and verified under qemu, fp32 and through the `int8` pass (uint8
activations, full int8 weights). ONNX Runtime: libonnxruntime.so from PyPI's aarch64 wheel of the
installed version, driven by bench/arm_count/ort_runner.c (its C API), on the same fp32 and int8
ONNX files. Its kernel choice follows the emulated core: qemu hands it the core's HWCAP bits, and a
/proc/cpuinfo naming the core (qemu 7.2 shows the host's) sits in the emulator's library prefix.
Only cores qemu models are compared (`-cpu` cortex-a53: no dot product; cortex-a76: sdot/udot), not
qemu's `max`, whose i8mm and SVE would let ONNX Runtime use kernels no camera core here has.

Needs `apt-get install qemu-user gcc` beside `make test-arm`'s packages (qemu-user-static has no
plugin support). The record goes to bench/results/bench_arm-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from machine_info import machine, save_record, stamp

from edgecam.compiler.build import compile_model
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.targets import arm_emulation, create_target

SOURCES = Path(__file__).with_name("arm_count")
EXTRA = 2  # inferences beyond the first in the second run
# The aims: edgecam int8 executes at least 2× fewer instructions than its fp32, and fewer than
# ONNX Runtime's int8.
TARGETS = {
    "int8_over_fp32": ("<=", 0.5, "edgecam int8 instructions over edgecam fp32"),
    "int8_over_ort_int8": ("<", 1.0, "edgecam int8 instructions over ONNX Runtime int8"),
}
# MIDR part numbers (/proc/cpuinfo "CPU part") of the cores qemu models.
CPU_PARTS = {"cortex-a53": "0xd03", "cortex-a72": "0xd08", "cortex-a76": "0xd0b", "neoverse-n1": "0xd0c"}


def model_and_feeds(name: str, work: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """The fp32 model and a few real (fashion_cnn) or random (mobilenet_v2) inputs."""
    if name == "fashion_cnn":
        from edgecam.compiler.frontends.onnx import load_onnx
        from edgecam.models.fashion_cnn import load_samples, onnx_path
        from edgecam.preprocessing import preprocess

        spec = load_onnx(onnx_path()).preprocessing
        images, _ = load_samples()
        return onnx_path(), [{"image": preprocess(image, spec)} for image in images[:16]]
    import shapes

    path = work / f"{name}.onnx"
    onnx.save(getattr(shapes, name)(seed=3), str(path))
    rng = np.random.default_rng(0)
    return path, [{"image": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)} for _ in range(8)]


def int8_model(source: Path, feeds: list[dict[str, np.ndarray]], work: Path) -> Path:
    quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(
        onnx.load(str(source)), PassContext(feeds, work / "int8-work")
    )
    path = work / f"{source.stem}-int8.onnx"
    onnx.save(quantized.model, str(path))
    return path


class Emulator:
    """The plugin, ONNX Runtime's aarch64 library and runner, and a library prefix per core."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.plugin = work / "count_insns.so"
        _run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(self.plugin), str(SOURCES / "count_insns.c")])
        version = importlib.metadata.version("onnxruntime")
        arm_emulation.download_wheels([f"onnxruntime=={version}"], work / "wheels")
        ort = work / "ort"
        wheel = next((work / "wheels").glob("onnxruntime-*.whl"))
        arm_emulation.extract_from_wheel(wheel, {f"onnxruntime/capi/libonnxruntime.so.{version}": "."}, ort)
        (ort / f"libonnxruntime.so.{version}").rename(ort / "libonnxruntime.so.1")  # its soname
        self.ort_runner = ort / "ort_runner"
        _run([
            "aarch64-linux-gnu-gcc", "-O2", "-o", str(self.ort_runner), str(SOURCES / "ort_runner.c"),
            str(ort / "libonnxruntime.so.1"), "-Wl,-rpath,$ORIGIN",
        ])  # fmt: skip

    def prefix(self, core: str) -> Path:
        """qemu's -L: the cross toolchain's libraries and a /proc/cpuinfo of `core` (ONNX Runtime's
        cpuinfo library reads it; the host's x86 one crashed it)."""
        root = self.work / f"root-{core}"
        if not root.exists():
            (root / "proc").mkdir(parents=True)
            (root / "lib").symlink_to(arm_emulation.SYSROOT / "lib")
            features = " ".join(create_target("aarch64", mcpu=core).info().cpu_features)
            (root / "proc" / "cpuinfo").write_text(
                f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
                f"CPU variant\t: 0x0\nCPU part\t: {CPU_PARTS[core]}\nCPU revision\t: 0\n\n"
            )
        return root

    def count(self, command: list[str], core: str) -> int:
        out = self.work / "count"
        _run([arm_emulation.PLUGIN_QEMU, "-plugin", f"{self.plugin},out={out}", "-L", str(self.prefix(core)),
              "-cpu", core, *command])  # fmt: skip
        return int(out.read_text())

    def edgecam(self, library: Path, feed: dict[str, np.ndarray], core: str) -> int:
        counts = []
        for runs in (1, 1 + EXTRA):
            out = self.work / "count"
            plugin = f"{self.plugin},out={out}"
            arm_emulation.run_library(library, [feed] * runs, list(feed), cpu=core, plugin=plugin)
            counts.append(int(out.read_text()))
        return (counts[1] - counts[0]) // EXTRA

    def onnxruntime(self, model: Path, feed: dict[str, np.ndarray], core: str) -> int:
        """Instructions per inference of ONNX Runtime on `model`; its outputs checked against this
        host's ONNX Runtime first (an ABI slip in the runner would show there)."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        (name, value), output = next(iter(feed.items())), session.get_outputs()[0].name
        expected = session.run([output], feed)[0]
        value.astype(np.float32).tofile(self.work / "input.f32")
        shape = ",".join(str(d) for d in value.shape)

        def command(runs: int) -> list[str]:
            return [str(self.ort_runner), str(model), name, str(self.work / "input.f32"), shape, output,
                    str(expected.size), str(runs), str(self.work / "output.f32")]  # fmt: skip

        counts = [self.count(command(runs), core) for runs in (1, 1 + EXTRA)]
        got = np.fromfile(self.work / "output.f32", np.float32)
        scale = float(np.abs(expected).max()) or 1.0
        assert np.abs(got - expected.ravel()).max() <= 0.05 * scale, "ONNX Runtime under qemu disagrees"
        return (counts[1] - counts[0]) // EXTRA


def bench(name: str, cores: list[str], emulator: Emulator, work: Path) -> dict[str, Any]:
    source, feeds = model_and_feeds(name, work)
    models = {"fp32": source, "int8": int8_model(source, feeds, work)}
    entry: dict[str, Any] = {}
    for core in cores:
        counts: dict[str, Any] = {}
        for precision, model in models.items():
            artifact = compile_model(
                model, "aarch64", work / f"{name}-{core}-{precision}", target_options={"mcpu": core}
            )
            verification = artifact.manifest.verification
            assert verification is not None, "qemu-user and the cross g++ are needed to verify"
            counts[f"edgecam_{precision}"] = emulator.edgecam(artifact.library_path, feeds[0], core)
            counts[f"ort_{precision}"] = emulator.onnxruntime(model, feeds[0], core)
            for engine in ("edgecam", "ort"):
                print(f"{name} {core} {engine} {precision}: {counts[f'{engine}_{precision}']:,}", flush=True)
        entry[core] = {
            "instructions_per_inference": counts,
            "ratios": {
                "int8_over_fp32": counts["edgecam_int8"] / counts["edgecam_fp32"],
                "int8_over_ort_int8": counts["edgecam_int8"] / counts["ort_int8"],
                "fp32_over_ort_fp32": counts["edgecam_fp32"] / counts["ort_fp32"],
            },
        }
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["fashion_cnn", "mobilenet_v2"])
    parser.add_argument("--cores", nargs="*", default=["cortex-a53", "cortex-a76"], choices=sorted(CPU_PARTS))
    args = parser.parse_args()
    missing = arm_emulation.missing_tools()
    if missing:
        sys.exit(f"missing {missing}: apt-get install {arm_emulation.APT_PACKAGES} qemu-user")
    os.environ["TVM_NUM_THREADS"] = "1"  # in edgecam's emulated runner: the plugin's counter is not atomic

    import onnxruntime
    import tvm

    with tempfile.TemporaryDirectory(prefix="bench-arm-") as tmp:
        work = Path(tmp)
        emulator = Emulator(work)
        results = {name: bench(name, args.cores, emulator, work) for name in args.models}
    record = {
        "created": stamp()[0],
        "machine": machine(tvm=tvm.__version__, onnxruntime=onnxruntime.__version__, qemu=_qemu_version()),
        "what": "guest instructions per inference under qemu-user (TCG plugin), one thread per engine",
        "int8_pass": {"kind": "int8"},
        "models": results,
        "targets": [
            {
                "name": f"{name} {core}: {what}",
                "value": entry["ratios"][ratio],
                "op": op,
                "bound": bound,
                "unit": "ratio",
            }
            for name, cores in results.items()
            for core, entry in cores.items()
            for ratio, (op, bound, what) in TARGETS.items()
        ],
    }
    for target in record["targets"]:
        print(f"{target['name']}: {target['value']:.3f} (aim {target['op']} {target['bound']})")
    save_record("bench_arm", record)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed ({done.returncode}): {done.stderr[-1500:]}")


def _qemu_version() -> str:
    done = subprocess.run(
        [arm_emulation.PLUGIN_QEMU, "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


if __name__ == "__main__":
    main()
