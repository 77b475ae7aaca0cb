"""Models whose inputs leave dimensions open (an exporter's dynamic batch or image size) compile
static: an open batch as 1, other open dimensions from --input-shape; and the camera serves them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgecam.compiler.build import compile_model
from edgecam.compiler.cli import app
from edgecam.compiler.errors import ModelImportError
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.compiler.frontends.open_dims import parse_input_shapes


def _open_image_net(path: Path, dims: list[int | str]) -> Path:
    """image [dims] → Conv 3x3 (4 channels) → Relu: every size of the input reaches the output."""
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "open",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "h", "w"])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_an_open_batch_compiles_as_one_frame_and_verifies(
    make_convnet: Callable[..., Path], tmp_path: Path
) -> None:
    dynamic = make_convnet("dyn.onnx", batch="N")
    artifact = compile_model(dynamic, "x86_64", tmp_path / "out", samples=2)
    manifest = artifact.manifest
    assert [s.shape for s in manifest.inputs] == [[1, 1, 28, 28]]
    assert [s.shape for s in manifest.outputs] == [[1, 10]]
    assert manifest.verification is not None  # compared with ONNX Runtime running the open model


def test_open_image_sizes_need_input_shape_and_name_it(tmp_path: Path) -> None:
    model = _open_image_net(tmp_path / "open.onnx", ["N", 3, "H", "W"])
    with pytest.raises(ModelImportError) as caught:
        load_onnx(model)
    message = str(caught.value)
    assert "'image'" in message and "--input-shape image=1,3,SIZE,SIZE" in message
    sized = load_onnx(model, {"image": [1, 3, 10, 12]})
    assert [s.shape for s in sized.inputs] == [[1, 3, 10, 12]]
    assert [s.shape for s in sized.outputs] == [[1, 4, 8, 10]]  # inferred from the sized input
    assert (sized.preprocessing.height, sized.preprocessing.width) == (10, 12)


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        ({"image": [1, 3, 10]}, "does not fit"),  # another rank
        ({"image": [1, 1, 10, 12]}, "does not fit"),  # contradicts the fixed 3 channels
        ({"pixels": [1, 3, 10, 12]}, "not inputs of the model"),
    ],
)
def test_input_shapes_that_contradict_the_model_are_refused(
    tmp_path: Path, shapes: dict[str, list[int]], expected: str
) -> None:
    model = _open_image_net(tmp_path / "open.onnx", ["N", 3, "H", "W"])
    with pytest.raises(ModelImportError, match=expected):
        load_onnx(model, shapes)


def test_input_shape_options_are_parsed_or_refused_by_value() -> None:
    assert parse_input_shapes(["image=1,3,224,224", "a=b=2"]) == {"image": [1, 3, 224, 224], "a=b": [2]}
    for bad in ("image", "=1,2", "image=1,x", "image=-1,3"):
        with pytest.raises(ValueError, match="--input-shape"):
            parse_input_shapes([bad])


def test_compile_cli_takes_input_shape(tmp_path: Path) -> None:
    model = _open_image_net(tmp_path / "open.onnx", ["N", 3, "H", "W"])
    runner = CliRunner()
    refused = runner.invoke(app, ["compile", str(model), "-t", "x86_64", "-o", str(tmp_path / "a")])
    assert refused.exit_code == 2 and not (tmp_path / "a").exists()
    built = runner.invoke(
        app,
        [
            "compile",
            str(model),
            "-t",
            "x86_64",
            "-o",
            str(tmp_path / "b"),
            "--input-shape",
            "image=1,3,16,16",
        ],
    )
    assert built.exit_code == 0, built.output
    assert (tmp_path / "b" / "manifest.json").is_file()


def test_the_camera_serves_an_open_batch_onnx(make_convnet: Callable[..., Path]) -> None:
    from edgecam.server.runtime import load_model

    model = load_model(make_convnet("dyn.onnx", batch="N"))  # warmed up on one frame, not on shape [-1, ...]
    out = model.runtime.run({"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert next(iter(out.values())).shape == (1, 10)
