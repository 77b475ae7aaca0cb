"""The CUDA target builds without a GPU into a library that holds a cubin for its arch and no CUDA source
(a camera needs no NVRTC); the artifact says what it needs and GPU-less hosts refuse it."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecam.compiler.artifact import Artifact, ArtifactError, load_artifact
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import BuildError, UnknownTargetError
from edgecam.compiler.targets.cuda_cubin import compile_cubin, cubin_arch, cubin_archs, with_cubins

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")
KERNEL = 'extern "C" __global__ void add_one(float* a) { a[threadIdx.x] += 1.0f; }\n'


# In a fresh process: load the library with TVM and capture the bytes TVM's loader hands to the CUDA
# module loader ("ffi.Module.load_from_bytes.cuda", absent without the driver, stood in for here).
_CAPTURE = textwrap.dedent("""
    import sys, tvm, tvm_ffi
    seen = []
    def capture(data):
        seen.append(bytes(data))
        raise RuntimeError("captured")
    tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", capture, override=True)
    try:
        tvm.runtime.load_module(sys.argv[1])
    except Exception:
        pass
    sys.stdout.buffer.write(b"".join(seen))
""")


def _str(data: bytes) -> bytes:
    """How TVM serializes a string or byte string: u64 length, little-endian, then the bytes."""
    return struct.pack("<Q", len(data)) + data


@pytest.fixture(scope="module")
def gpu_artifact(tmp_path_factory: pytest.TempPathFactory, convnet_builder: Callable[..., Path]) -> Artifact:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH: CUDA artifacts carry a cubin compiled by it")
    workdir = tmp_path_factory.mktemp("cuda")
    model = convnet_builder(workdir / "convnet.onnx")
    return compile_model(model, "cuda", workdir / "gpu", target_options={"arch": "sm_90"})


def test_cuda_artifact_holds_a_cubin_and_no_source(gpu_artifact: Artifact) -> None:
    manifest = gpu_artifact.manifest
    assert manifest.target.name == "cuda-sm90"
    assert manifest.target.device == "cuda"
    assert manifest.target.device_code == "cubin sm_90"
    assert manifest.target.tvm["kind"] == "cuda" and manifest.target.tvm["arch"] == "sm_90"
    assert manifest.verification is None  # no GPU here: the manifest must not claim a check it did not run
    library = gpu_artifact.library_path.read_bytes()
    assert cubin_archs(library) == ["sm_90"]  # one CUDA module, compiled for the arch asked for
    # Serialized with format "cubin", which the loader hands to the driver as it is (format "cuda",
    # source, is what it would compile with NVRTC), and no kernel source left anywhere in the library.
    assert _str(b"cubin") in library
    assert b"__global__" not in library
    assert load_artifact(gpu_artifact.path, check_host=False).manifest == manifest


def test_the_cuda_loader_gets_the_cubin(gpu_artifact: Artifact) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _CAPTURE, str(gpu_artifact.library_path)], capture_output=True, timeout=120
    )
    assert loaded.returncode == 0, loaded.stderr.decode()
    payload = loaded.stdout  # [fmt][function table][code], as CUDAModuleNode::SaveToBytes wrote it
    assert payload.startswith(_str(b"cubin"))
    code = payload[payload.rindex(b"\x7fELF") :]
    assert payload.endswith(_str(code))  # the code field is that whole ELF: the cubin, not source
    assert cubin_arch(code[:64]) == "sm_90"


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has a GPU")
def test_a_host_without_a_gpu_refuses_it(gpu_artifact: Artifact) -> None:
    with pytest.raises(ArtifactError) as caught:
        load_artifact(gpu_artifact.path)
    assert caught.value.check == "device"
    assert "GPU" in str(caught.value)


def test_unknown_arch_lists_the_known_ones(convnet: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "cuda", tmp_path / "gpu", target_options={"arch": "sm_1000"})
    assert "sm_1000" in str(caught.value) and "sm_87" in str(caught.value)
    assert not (tmp_path / "gpu").exists()


def _packed(cuda_payload: bytes) -> bytes:
    """A library blob as TVM packs it: VM executable → host library (_lib) → CUDA module."""
    body = (
        struct.pack("<5Q", 4, 0, 1, 2, 2)  # import tree row pointers: count, then values
        + struct.pack("<3Q", 2, 1, 2)  # child indices
        + _str(b"relax.VMExecutable") + _str(b"vm bytes")
        + _str(b"_lib")
        + _str(b"cuda") + _str(cuda_payload)
    )  # fmt: skip
    return struct.pack("<Q", len(body)) + body


def test_packed_cuda_source_is_swapped_for_the_cubin() -> None:
    source, fmap = KERNEL, b"\x01\x00\x00\x00\x00\x00\x00\x00function info"
    packed = _packed(_str(b"cuda") + fmap + _str(source.encode()))
    compiled: list[str] = []

    def compile_stub(code: str) -> bytes:
        compiled.append(code)
        return b"\x7fELF cubin bytes"

    blob = with_cubins(packed, [source], compile_stub)
    assert compiled == [source]
    assert blob == _packed(_str(b"cubin") + fmap + _str(b"\x7fELF cubin bytes"))


def test_packed_imports_that_are_not_source_are_refused() -> None:
    packed = _packed(_str(b"ptx") + b"fmap" + _str(b"// ptx"))
    with pytest.raises(BuildError, match="'ptx'"):
        with_cubins(packed, ["// ptx"], lambda code: b"")
    with pytest.raises(BuildError, match="size"):
        with_cubins(packed[:-1], [], lambda code: b"")


def test_cubin_arch_reads_both_elf_abis() -> None:
    def header(osabi: int, flags: int, machine: int = 190) -> bytes:
        data = bytearray(64)
        data[:8] = b"\x7fELF\x02\x01\x01" + bytes([osabi])
        struct.pack_into("<H", data, 18, machine)
        struct.pack_into("<I", data, 48, flags)
        return bytes(data)

    assert cubin_arch(header(0x41, 0x6005704)) == "sm_87"  # nvcc 13: SM in bits 8-15
    assert cubin_arch(header(0x33, 0x5A055A)) == "sm_90"  # older ABI: SM in bits 0-7
    assert cubin_arch(header(0x41, 0x6005704, machine=62)) is None  # x86-64, not a cubin
    assert cubin_archs(b"host" + header(0x41, 0x6005A04) + b"tail") == ["sm_90"]


@needs_nvcc
def test_nvcc_builds_the_cubin_for_the_arch() -> None:
    import tvm

    cubin = compile_cubin(KERNEL, tvm.target.Target({"kind": "cuda", "arch": "sm_87"}))
    assert cubin_arch(cubin[:64]) == "sm_87"


@needs_nvcc
def test_an_arch_this_nvcc_cannot_build_says_so() -> None:
    import tvm

    version = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    if "release 13." not in version:
        pytest.skip("this nvcc still builds sm_53")
    with pytest.raises(BuildError) as caught:
        compile_cubin(KERNEL, tvm.target.Target({"kind": "cuda", "arch": "sm_53"}))
    assert "sm_53" in str(caught.value) and "older toolkit" in str(caught.value)
    assert "__global__" not in str(caught.value)  # nvcc's message, not the generated source


def test_without_nvcc_the_build_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    monkeypatch.setenv("PATH", "")
    with pytest.raises(BuildError, match="nvcc is not on PATH"):
        compile_cubin(KERNEL, tvm.target.Target({"kind": "cuda", "arch": "sm_87"}))


@needs_nvcc
def test_cli_takes_the_arch(convnet: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "edgecam", "compile", str(convnet), "--target", "cuda"]
    done = subprocess.run(
        [*command, "--arch", "sm_89", "--out", str(tmp_path / "a")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "cuda-sm89 (cubin sm_89)" in done.stderr and "not verified" in done.stderr
    assert load_artifact(tmp_path / "a", check_host=False).manifest.target.device_code == "cubin sm_89"
