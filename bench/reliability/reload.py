"""Reload examination: broken or unsigned versions are refused while a client keeps calling ModelInfer.

The kinds of reload, each tried under a real gRPC client on loopback against a real server whose
repository trusts one Ed25519 key:

- good: a correctly built, signed version (served);
- text: the library's `.text` bit-flipped (every byte XOR 0xFF), manifest re-hashed and re-signed;
- dynamic: the library's `.dynamic` zeroed, re-hashed and re-signed;
- isa: built for x86-64-v4 (AVX-512) and relabelled with the CPU features of a build for this host,
  re-hashed and re-signed: refused where the host lacks AVX-512, served (it runs) where it has it;
- isa_fp16: the model in float16 built for Sapphire Rapids (LLVM emits AVX-512 FP16 arithmetic,
  vaddph...), relabelled the same way: refused (SIGILL) on every host without avx512_fp16, which
  includes AVX-512 hosts such as AMD Zen 4;
- unsigned: the good version without its signature (refused: keys are configured).

`run(args)` returns the figures and a `targets` list; bench/bench_reliability.py collects it. Alone,
`python bench/reliability/reload.py` prints them and saves
bench/results/reliability_reload-<date>-<host>.json. The helpers below (compile, corrupt, hammer)
are also what tests/server/test_trust.py uses.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("good", "text", "dynamic", "isa", "isa_fp16", "unsigned")
BROKEN_LIBRARY_KINDS = ("text", "dynamic", "isa", "isa_fp16")
# The relabelled builds: artifact name, LLVM CPU, and whether the model is converted to float16 first.
ISA_BUILDS = {"isa": ("avx512", "x86-64-v4", False), "isa_fp16": ("avx512fp16", "sapphirerapids", True)}
_COMMAND_TIMEOUT_S = 240


def edgecam(*args: str | Path) -> str:
    """Run the real `edgecam` command (python -m edgecam); its stderr on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "edgecam", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise RuntimeError(f"edgecam {' '.join(map(str, args))} failed: {result.stderr.strip()[-500:]}")
    return result.stderr


def build_signed_artifacts(workdir: Path) -> dict[str, Path]:
    """keygen, then the tiny model compiled (and signed) for this host and for each of ISA_BUILDS."""
    onnx_file = _tiny_model_builder()(workdir / "tiny.onnx")
    key = workdir / "fleet.key"
    edgecam("keygen", key)
    paths = {"key": key, "public_key": workdir / "fleet.key.pub", "onnx": onnx_file}
    builds = [("host", onnx_file, ())] + [
        (name, _float16(onnx_file) if fp16 else onnx_file, ("--mcpu", mcpu, "--tolerance", "0.1"))
        for name, mcpu, fp16 in ISA_BUILDS.values()
    ]
    for name, model, extra in builds:
        out = workdir / name
        edgecam("compile", model, "-t", "x86_64", "-o", out, "--samples", "1", "--sign-key", key, *extra)
        paths[name] = out
    return paths


def _tiny_model_builder() -> Any:
    """build_tiny_onnx of tests/server/conftest.py (the tests' tiny template-matching model), loaded
    by path under its own name: `import conftest` would find whichever conftest pytest loaded first."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tests" / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location("edgecam_server_test_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_onnx


def _float16(onnx_file: Path) -> Path:
    """The model in float16, inputs and outputs float32 (onnxconverter-common, as the fp16 pass uses)."""
    import onnx
    from onnxconverter_common import float16

    out = onnx_file.with_name(onnx_file.stem + "-fp16.onnx")
    onnx.save(float16.convert_float_to_float16(onnx.load(str(onnx_file)), keep_io_types=True), str(out))
    return out


def section_span(library: Path, section: str) -> tuple[int, int]:
    """(file offset, size) of an ELF section, as binutils' readelf reports it."""
    out = subprocess.run(
        ["readelf", "-S", "-W", str(library)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for line in out.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == section:
            return int(fields[4], 16), int(fields[5], 16)
    raise KeyError(f"{library} has no section {section}")


def make_variant(artifacts: dict[str, Path], kind: str, out: Path) -> Path:
    """A copy of the good artifact (or the AVX-512 one) broken as `kind` says, hashes and signature redone."""
    from edgecam.compiler.artifact import MANIFEST_NAME, Manifest, load_artifact, sha256_file
    from edgecam.signing import SIGNATURE_NAME, load_private_key, sign_manifest

    source = artifacts[ISA_BUILDS[kind][0] if kind in ISA_BUILDS else "host"]
    shutil.copytree(source, out)
    manifest = Manifest.model_validate_json((out / MANIFEST_NAME).read_text())
    library = out / manifest.library
    if kind in ("text", "dynamic"):
        data = bytearray(library.read_bytes())
        offset, size = section_span(library, f".{kind}")
        data[offset : offset + size] = (
            bytes(b ^ 0xFF for b in data[offset : offset + size]) if kind == "text" else bytes(size)
        )
        library.write_bytes(bytes(data))
    if kind in ISA_BUILDS:  # the label a build for this host carries: the camera's check passes
        host = load_artifact(artifacts["host"], check_host=False).manifest.target
        manifest.target = manifest.target.model_copy(update={"cpu_features": host.cpu_features})
    if kind == "unsigned":
        (out / SIGNATURE_NAME).unlink()
        return out
    manifest.files = {name: sha256_file(out / name) for name in manifest.files}
    (out / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    sign_manifest(out / MANIFEST_NAME, load_private_key(artifacts["key"]))
    return out


def host_runs(artifacts: dict[str, Path], kind: str) -> bool:
    """Whether this host has every feature an ISA build really needs (then it is not broken here)."""
    from edgecam.compiler.artifact import host_cpu_features, load_artifact

    build = artifacts[ISA_BUILDS[kind][0]]
    needed = load_artifact(build, check_host=False).manifest.target.cpu_features
    return set(needed) <= host_cpu_features()


def infer_request(model: str = "tiny") -> Any:
    from edgecam.proto.inference import grpc_service_pb2 as oip

    request = oip.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((1, 1, 28, 28), np.float32).tobytes())
    return request


class Hammer:
    """Client threads calling ModelInfer on loopback until stopped; counts answers and failures."""

    def __init__(self, address: str, threads: int = 2, token: str | None = None) -> None:
        self.address, self.token = address, token
        self.ok, self.failures = 0, list[str]()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        import grpc

        from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc

        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        with grpc.insecure_channel(self.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            request = infer_request()
            while not self._stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=10, metadata=metadata)
                    with self._lock:
                        self.ok += 1
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append(f"{exc.code().name}: {exc.details()}")

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, len(self.failures)

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


@contextmanager
def server_with_keys(repo: Path, public_key: Path) -> Iterator[Any]:
    from edgecam.server.app import EdgecamServer
    from edgecam.server.settings import ServerSettings

    settings = ServerSettings(grpc_port=0, metrics_port=0, model_repository=repo, trusted_keys=[public_key])
    server = EdgecamServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def reload_kinds(artifacts: dict[str, Path], workdir: Path, settle_s: float = 0.3) -> dict[str, Any]:
    """Serve version 1, then load each kind as the next version under a client; figures per kind."""
    import grpc

    from edgecam.proto.inference import grpc_service_pb2 as oip
    from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc

    repo = workdir / "repo"
    (repo / "tiny").mkdir(parents=True)
    shutil.copytree(artifacts["host"], repo / "tiny" / "1")
    results: dict[str, Any] = {}
    with server_with_keys(repo, artifacts["public_key"]) as server:
        address = f"127.0.0.1:{server.grpc_port}"
        with Hammer(address) as hammer, grpc.insecure_channel(address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            for number, kind in enumerate(KINDS, start=2):
                make_variant(artifacts, kind, repo / "tiny" / str(number))
                time.sleep(settle_s)
                ok_before, failed_before = hammer.snapshot()
                request = oip.RepositoryModelLoadRequest(model_name="tiny")
                request.parameters["version"].string_param = str(number)
                started = time.perf_counter()
                try:
                    stub.RepositoryModelLoad(request, timeout=120)
                    outcome, reason = "served", ""
                except grpc.RpcError as exc:
                    outcome, reason = "refused", f"{exc.code().name}: {exc.details()}"
                seconds = time.perf_counter() - started
                time.sleep(settle_s)
                ok_after, failed_after = hammer.snapshot()
                serving = stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny"), timeout=10).versions
                results[kind] = {
                    "version": str(number),
                    "outcome": outcome,
                    "reason": reason,
                    "load_seconds": round(seconds, 3),
                    "requests_answered": ok_after - ok_before,
                    "failed_requests": failed_after - failed_before,
                    "serving_after": list(serving),
                }
        results["total_failed_requests"] = len(hammer.failures)
        results["failure_examples"] = hammer.failures[:5]
        results["load_failures_metric"] = {
            sample.labels["reason"]: sample.value
            for metric in server.registry.collect()
            if metric.name == "edgecam_model_load_failures"
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    return results


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The examination: figures per reload kind and the Done-when targets; bounded (a few minutes)."""
    if platform.machine() != "x86_64" or shutil.which("readelf") is None:
        why = f"needs an x86_64 host (the AVX-512 cases) and binutils' readelf; this is {platform.machine()}"
        return {"skipped": why, "targets": []}
    with tempfile.TemporaryDirectory(prefix="edgecam-reload-") as tmp:
        workdir = Path(tmp)
        artifacts = build_signed_artifacts(workdir)
        runs_here = {kind: host_runs(artifacts, kind) for kind in ISA_BUILDS}
        kinds = reload_kinds(artifacts, workdir)
    refused_broken = [k for k in BROKEN_LIBRARY_KINDS if kinds[k]["outcome"] == "refused"]
    # An ISA build this host can run is not broken here: served is the right outcome for it.
    expected_refusals = [k for k in BROKEN_LIBRARY_KINDS if not runs_here.get(k, False)]
    failed_broken = sum(kinds[k]["failed_requests"] for k in BROKEN_LIBRARY_KINDS)
    return {
        "kinds": kinds,
        "host_runs_isa_build": runs_here,
        "corrupt_library_kinds_refused": refused_broken,
        "targets": [
            {
                "name": "reload: failed requests while corrupt-library versions load (text, dynamic, isa*)",
                "value": failed_broken,
                "op": "==",
                "bound": 0,
                "unit": "requests",
            },
            {
                "name": "reload: corrupt-library versions refused, of those broken on this host",
                "value": len([k for k in expected_refusals if k in refused_broken]),
                "op": "==",
                "bound": len(expected_refusals),
                "unit": "versions",
            },
            {
                "name": "reload: unsigned artifact refused when keys are configured",
                "value": int(kinds["unsigned"]["outcome"] == "refused"),
                "op": "==",
                "bound": 1,
                "unit": "bool",
            },
            {
                "name": "reload: failed requests over all reloads (good, corrupt, unsigned)",
                "value": kinds["total_failed_requests"],
                "op": "==",
                "bound": 0,
                "unit": "requests",
            },
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: machine_info
    from machine_info import machine, save_record, stamp

    record = {"benchmark": "reliability_reload", "time": stamp()[0], "machine": machine()}
    started = time.perf_counter()
    figures = run(parser.parse_args())
    print(json.dumps(figures, indent=1))
    save_record(
        "reliability_reload", {**record, **figures, "seconds": round(time.perf_counter() - started, 1)}
    )


if __name__ == "__main__":
    main()
