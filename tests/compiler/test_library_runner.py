"""One runner of a compiled library (edgecam/library.py): compile-time verification, the report's
latency process and the camera's runtime all execute a library through it, so a library each of them
accepts is one the camera runs, and one the camera refuses they refuse the same way."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecam.compiler import verify
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import VerificationError
from edgecam.compiler.evaluate import MeasureOptions, RuntimeProcess
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.library import CompiledLibrary, LibraryError, check_elf
from edgecam.server.errors import ModelLoadError
from edgecam.server.runtime import load_model


def test_verification_computes_bit_for_bit_what_the_camera_serves(
    make_convnet: Callable[..., Path], tmp_path: Path
) -> None:
    onnx_path = make_convnet("net.onnx")
    artifact = compile_model(onnx_path, "x86_64", tmp_path / "artifact")
    feeds = verify.sample_inputs(load_onnx(onnx_path), 3)
    verified = verify.run_library(artifact.library_path, feeds, ["image"])
    served = load_model(artifact.path)
    for feed, outputs in zip(feeds, verified, strict=True):
        camera = served.runtime.run(feed)
        assert list(camera) == [spec.name for spec in served.outputs] and len(outputs) == len(camera)
        for got, expected in zip(outputs, camera.values(), strict=True):
            np.testing.assert_array_equal(got, expected)


def test_a_truncated_library_is_refused_alike_by_verification_evaluation_and_the_camera(
    make_convnet: Callable[..., Path], tmp_path: Path
) -> None:
    artifact = compile_model(make_convnet("net.onnx"), "x86_64", tmp_path / "artifact")
    cut = tmp_path / "cut.so"
    cut.write_bytes(artifact.library_path.read_bytes()[: artifact.library_path.stat().st_size // 2])
    image = np.zeros([1, 1, 28, 28], np.float32)
    specs = list(artifact.manifest.inputs)
    # The camera's loader (what TvmRuntime runs, as LibraryError → ModelLoadError).
    with pytest.raises(LibraryError, match=r"cut.so is truncated"):
        CompiledLibrary(cut, specs)
    # Verification: the same check, as the compiler's error; before, dlopen of a cut library could
    # kill the compiler with SIGBUS.
    with pytest.raises(VerificationError, match=r"cut.so is truncated"):
        verify.run_library(cut, [{"image": image}], ["image"])
    # The compression report's latency process: the same words come back as the reason.
    np.savez(tmp_path / "inputs.npz", image)
    with RuntimeProcess(threads=1) as runtime:
        reason = runtime.time(cut, tmp_path / "inputs.npz", MeasureOptions(runs=2, warmup=0))
        timed = runtime.time(artifact.library_path, tmp_path / "inputs.npz", MeasureOptions(runs=2, warmup=0))
    assert isinstance(reason, str) and "LibraryError" in reason and "cut.so is truncated" in reason
    assert not isinstance(timed, str) and timed.p50_ms > 0


def test_the_camera_reports_a_library_error_as_a_load_error(
    make_convnet: Callable[..., Path], tmp_path: Path
) -> None:
    artifact = compile_model(make_convnet("net.onnx"), "x86_64", tmp_path / "artifact")
    copy = tmp_path / "copy"
    shutil.copytree(artifact.path, copy)
    library = copy / artifact.manifest.library
    library.write_bytes(b"\x7fELF" + b"\0" * 60)  # an ELF header and nothing it points at
    from edgecam.compiler.artifact import Artifact
    from edgecam.server.runtime.tvm import TvmRuntime

    with pytest.raises(ModelLoadError, match=r"cannot load TVM library|not a TVM Relax VM|truncated"):
        TvmRuntime(Artifact(path=copy, manifest=artifact.manifest))


def test_check_elf_refuses_truncated_and_foreign_files(tmp_path: Path) -> None:
    real = Path(sys.executable).resolve()
    check_elf(real)  # a real ELF passes
    cut = tmp_path / "cut.so"
    cut.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(LibraryError, match=r"cut.so is truncated"):
        check_elf(cut)
    text = tmp_path / "text.so"
    text.write_text("not a library\n" * 10)
    with pytest.raises(LibraryError, match=r"text.so is not an ELF"):
        check_elf(text)


@pytest.mark.parametrize("shape", [[0, 3], [], [2, 3]])
def test_empty_scalar_and_plain_inputs_run(tmp_path: Path, shape: list[int]) -> None:
    """An empty tensor has no aligned data to stage (TVM refuses it through DLPack), so it goes in
    as a new tensor, as verification passed it before; a scalar and a plain tensor are staged."""
    import tvm
    from tvm import relax

    from edgecam.model import TensorSpec

    x = relax.Var("x", relax.TensorType(shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.add(x, relax.const(1.0, "float32")))
        builder.emit_func_output(out)
    library = tmp_path / "add.so"
    tvm.compile(builder.get(), target="llvm").export_library(str(library))
    value = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    compiled = CompiledLibrary(library, [TensorSpec(name="x", datatype="FP32", shape=shape)])
    (got,) = compiled.run({"x": value})
    np.testing.assert_array_equal(got, value + 1)
    np.testing.assert_array_equal(verify.run_library(library, [{"x": value}], ["x"])[0][0], value + 1)
