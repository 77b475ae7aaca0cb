"""One reader of the edgecam ONNX metadata: `compile` (load_onnx) and `serve` (load_model) describe the
same .onnx file the same way, and refuse the same bad metadata with the same one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecam.compiler.errors import ModelImportError
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.model import ModelDescription, metadata_props
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing
from edgecam.server.errors import ModelLoadError
from edgecam.server.runtime import load_model


def _write(path: Path, shape: list[int], props: dict[str, str] | None) -> Path:
    """A model whose one input `shape` is averaged into 4 scores: enough for both sides to load it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = int(np.prod(shape))
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        ],
        "described",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array([1, size], np.int64), "flat_shape"),
            numpy_helper.from_array(np.full((size, 4), 1.0 / size, np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def _both(path: Path) -> tuple[ModelDescription, ModelDescription]:
    return load_onnx(path).description, load_model(path).description


@pytest.mark.parametrize(
    ("shape", "layout", "color"),
    [([1, 3, 8, 6], "NCHW", "RGB"), ([1, 8, 6, 1], "NHWC", "GRAY"), ([1, 8, 6, 3], "NHWC", "RGB")],
)
def test_without_metadata_compile_and_serve_infer_the_same(
    tmp_path: Path, shape: list[int], layout: str, color: str
) -> None:
    compiled, served = _both(_write(tmp_path / "bare.onnx", shape, None))
    assert compiled == served
    assert (compiled.preprocessing.layout, compiled.preprocessing.color) == (layout, color)
    assert (compiled.preprocessing.height, compiled.preprocessing.width) == (8, 6)
    assert compiled.model_name == "bare" and compiled.labels == []


def test_written_metadata_reads_back_the_same_on_both_sides(tmp_path: Path) -> None:
    pre = Preprocessing(height=8, width=6, color="BGR", layout="NHWC", mean=[0.5], std=[0.25])
    post = Postprocessing(output="scores", apply_softmax=True, top_k=2)
    props = metadata_props("named", pre, post, ["a", "b", "c", "d"])
    compiled, served = _both(_write(tmp_path / "m.onnx", [1, 8, 6, 3], props))
    assert compiled == served
    assert (compiled.model_name, compiled.preprocessing, compiled.postprocessing) == ("named", pre, post)
    assert compiled.labels == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("edgecam.labels", json.dumps([0, 1, 2, 3]), "must be a JSON list of strings"),
        ("edgecam.labels", "[not json", "is not JSON"),
        ("edgecam.preprocessing", json.dumps({"height": 0, "width": 6}), "height"),
    ],
)
def test_bad_metadata_is_refused_alike_in_one_line(tmp_path: Path, key: str, value: str, named: str) -> None:
    path = _write(tmp_path / "bad.onnx", [1, 1, 8, 6], {key: value})
    with pytest.raises(ModelImportError) as compiled:
        load_onnx(path)
    with pytest.raises(ModelLoadError) as served:
        load_model(path)
    for error in (compiled.value, served.value):
        message = str(error)
        assert "\n" not in message and key in message and named in message
    # The same words after where each side says the file is.
    assert str(compiled.value).split(": ", 1)[1] == str(served.value).split(": ", 1)[1]


def test_preprocessing_that_does_not_make_the_input_is_refused_by_compile_only(tmp_path: Path) -> None:
    """The compiler verifies with frames through the preprocessing, so it must make the first input;
    a server may serve such a model over KServe alone (a vector input), as client/load.py's does."""
    pre = json.dumps({"height": 5, "width": 6, "color": "GRAY"})
    path = _write(tmp_path / "off.onnx", [1, 1, 8, 6], {"edgecam.preprocessing": pre})
    with pytest.raises(ModelImportError) as compiled:
        load_onnx(path)
    assert "\n" not in str(compiled.value) and "produces [1, 1, 5, 6]" in str(compiled.value)
    served = load_model(path).description
    assert (served.preprocessing.height, served.inputs[0].shape) == (5, [1, 1, 8, 6])
