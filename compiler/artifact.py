"""The artifact directory: the only thing that crosses from compile to serve.

This is the one module that knows the manifest. It is imported by the server too, so it stays
light: pydantic, hashlib and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgecam import __version__
from edgecam.model import ModelDescription

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ArtifactError(Exception):
    """An artifact failed a named check; the message says what was found and what was expected."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"artifact check '{check}' failed: {message}")
        self.check = check


class TargetInfo(BaseModel):
    """What the compiled code needs from the machine that runs it."""

    name: str  # plain name: x86_64, aarch64, cuda-sm90, ...
    tvm: dict[str, Any] = Field(default_factory=dict)  # tvm.target.Target.export()
    arch: str  # platform.machine() of the hosts that can run it
    device: Literal["cpu", "cuda"] = "cpu"
    cpu_features: list[str] = Field(default_factory=list)  # /proc/cpuinfo flag names
    # What the library holds for the device, e.g. "cubin sm_87": code the driver loads as it is.
    # None: no device code, or (CUDA artifacts of older edgecam) CUDA source that needs NVRTC at load.
    device_code: str | None = None


class Compared(BaseModel):
    """One tensor verification compared with ONNX Runtime, its difference relative to its scale."""

    tensor: str
    kind: Literal["output", "intermediate"]
    metric: str  # how `value` is computed, e.g. "max|edgecam - onnxruntime| / max|onnxruntime|"
    value: float  # the worst over the samples
    bound: float  # what `value` was allowed, in the same units
    scale: float  # max|onnxruntime| over the samples
    # How much the verification inputs move the tensor: max |x_s - x_0| / scale. Near 0: its value
    # does not depend on them, and comparing it cannot tell a wrong build from a right one.
    input_sensitivity: float


class Verification(BaseModel):
    reference: str = "onnxruntime"
    samples: int
    max_abs_diff: float
    tolerance: float  # the loosest absolute bound any output was allowed
    runner: str = "native"  # how the library ran: "native", or an emulator ("qemu-aarch64 -cpu cortex-a53")
    # False: the outputs did not depend on the verification inputs, so intermediates were compared too;
    # None: one sample, which cannot tell (or a manifest of an older edgecam).
    outputs_depend_on_inputs: bool | None = None
    compared: list[Compared] = Field(default_factory=list)  # empty in manifests of older edgecam


class SourceModel(BaseModel):
    file: str
    sha256: str


class CodedWeights(BaseModel):
    """Weights the library takes as arguments instead of holding them: stored coded in `file`."""

    file: str  # the bundle inside the artifact (edgecam/weight_codec.py format)
    codec: str  # the codec of every tensor in it, e.g. "kmeans-huffman/1"
    params: list[str]  # tensor names, in the order the library takes them after the inputs
    # A library function run once at load on the decoded params (TVM's LiftTransformParams: weight
    # transposes/layouts); `main` then takes its outputs instead. None: `main` takes the params as they are.
    transform: str | None = None


class Manifest(ModelDescription):
    """The model's description (ModelDescription: name, tensors, pre/postprocessing, labels) and
    how it was built and checked."""

    schema_version: int = SCHEMA_VERSION
    edgecam_version: str = __version__
    tvm_version: str | None = None
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    runtime: Literal["tvm", "onnxruntime"]
    library: str  # file inside the artifact the runtime loads
    target: TargetInfo
    source: SourceModel | None = None
    recipe: dict[str, Any] | None = None
    # `edgecam compress`: the report summary (original and final numbers, accuracy gate); the full
    # report is report.json (+ report.png) among `files`.
    compression: dict[str, Any] | None = None
    coded_weights: CodedWeights | None = None
    verification: Verification | None = None
    measurements: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256


class Artifact(BaseModel):
    path: Path
    manifest: Manifest

    @property
    def library_path(self) -> Path:
        return self.path / self.manifest.library


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifact(
    out_dir: Path,
    manifest: Manifest,
    files: Mapping[str, Path],
    sign_key: Ed25519PrivateKey | None = None,
) -> Artifact:
    """Copy `files` (name inside the artifact → source path) and a hashed manifest into `out_dir`.

    The directory is assembled beside `out_dir` and renamed into place, so a failure leaves
    whatever was there before untouched and a reader never sees half an artifact. With `sign_key`
    the manifest is signed in the staging directory too (edgecam/signing.py): the artifact appears
    signed or not at all.
    """
    if manifest.library not in files:
        raise ArtifactError("library", f"{manifest.library!r} is not among the files {sorted(files)}")
    if manifest.coded_weights is not None and manifest.coded_weights.file not in files:
        raise ArtifactError(
            "coded_weights", f"{manifest.coded_weights.file!r} is not among the files {sorted(files)}"
        )
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hashes = {}
        for name, src in files.items():
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            hashes[name] = sha256_file(dest)
        final = manifest.model_copy(update={"files": hashes})
        (staging / MANIFEST_NAME).write_text(final.model_dump_json(indent=2) + "\n")
        if sign_key is not None:
            from edgecam.signing import sign_manifest

            sign_manifest(staging / MANIFEST_NAME, sign_key)
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Artifact(path=out_dir, manifest=final)


def load_artifact(path: Path, check_host: bool = True) -> Artifact:
    """Read and verify an artifact: schema, every file's hash, and that this host can run it."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError("manifest", f"{manifest_path} does not exist; is {path} an edgecam artifact?")
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError("manifest", f"{manifest_path} is not valid JSON: {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            "schema_version", f"manifest has schema_version {version!r}; this edgecam reads {SCHEMA_VERSION}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError("manifest", f"{manifest_path} does not match the schema: {exc}") from exc
    _verify_files(path, manifest)
    if check_host:
        check_host_can_run(manifest.target)
    return Artifact(path=path, manifest=manifest)


def _verify_files(path: Path, manifest: Manifest) -> None:
    if manifest.library not in manifest.files:
        raise ArtifactError("library", f"library {manifest.library!r} is not listed in the manifest's files")
    coded = manifest.coded_weights
    if coded is not None and coded.file not in manifest.files:
        raise ArtifactError(
            "coded_weights", f"weights file {coded.file!r} is not listed in the manifest's files"
        )
    for name, expected in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError("files", f"{file} is listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError("sha256", f"{file} has sha256 {actual}, the manifest says {expected}")


def host_cpu_features() -> set[str]:
    """CPU feature flags of this host as /proc/cpuinfo names them (x86 'flags', ARM 'Features')."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def check_host_can_run(target: TargetInfo) -> None:
    """Refuse code this machine cannot execute, before it dies of an illegal instruction."""
    arch = platform.machine()
    if target.arch != arch:
        raise ArtifactError(
            "target", f"artifact is built for {target.name} ({target.arch}); this host is {arch}"
        )
    missing = sorted(set(target.cpu_features) - host_cpu_features())
    if missing:
        raise ArtifactError(
            "cpu_features",
            f"artifact for {target.name} needs CPU features {missing} that this host lacks; "
            "recompile for this host (edgecam compile --target ...)",
        )
    if target.device == "cuda" and not _cuda_present():
        raise ArtifactError("device", f"artifact for {target.name} needs an NVIDIA GPU; none is visible")


def _cuda_present() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))


def replace_directory(staging: Path, target: Path) -> None:
    """Put the complete directory `staging` in place of `target` by renames (same file system): a
    reader sees the old directory or the new one, never a mix; the old one is removed after."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
