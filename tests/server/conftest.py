"""Tiny models and sample images built in code, for the runtime, source and pipeline tests.

The samples are ten 28x28 images, image k lit only in rows 2k..2k+1, labelled k; the tiny model
is a template matcher (one linear layer whose class-k weights are image k), so it classifies every
sample right and the online-accuracy metric has an exact expected value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgecam.model import metadata_props
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing
from edgecam.server.app import EdgecamServer
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.settings import ServerSettings

NUM_CLASSES = 10
LABELS = [f"class{k}" for k in range(NUM_CLASSES)]


def sample_images() -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((NUM_CLASSES, 28, 28), dtype=np.uint8)
    for k in range(NUM_CLASSES):
        images[k, 2 * k : 2 * k + 2, 4:24] = 255
    return images, np.arange(NUM_CLASSES, dtype=np.int64)


def build_tiny_onnx(path: Path, metadata: bool = True, probs_output: bool = False) -> Path:
    """image [1,1,28,28] float32 → logits [1,10] (and probs [1,10] when `probs_output`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    images, _ = sample_images()
    weights = (images.reshape(NUM_CLASSES, -1).T / 255.0).astype(np.float32)  # [784, 10]
    initializers = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "B"),
        numpy_helper.from_array(np.array([1, 784], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "B"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])]
    if probs_output:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, NUM_CLASSES]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 28, 28])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime and TVM's frontend both read
    if metadata:
        pre = Preprocessing(height=28, width=28, color="GRAY")
        post = Postprocessing(output="logits", apply_softmax=True, top_k=3)
        helper.set_model_props(model, metadata_props("tiny", pre, post, LABELS))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_builder() -> Callable[..., Path]:
    """build_tiny_onnx itself, for fixtures with a wider scope than make_onnx."""
    return build_tiny_onnx


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    return sample_images()


@pytest.fixture
def make_onnx(tmp_path: Path) -> Callable[..., Path]:
    """`make_onnx(name, metadata=True, probs_output=False)` writes a tiny model under tmp_path."""

    def make(name: str = "tiny.onnx", metadata: bool = True, probs_output: bool = False) -> Path:
        return build_tiny_onnx(tmp_path / name, metadata, probs_output)

    return make


@pytest.fixture
def samples_npz(tmp_path: Path) -> Path:
    images, labels = sample_images()
    path = tmp_path / "samples.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return build_tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> EdgecamMetrics:
    return EdgecamMetrics(registry)


@pytest.fixture
def serve() -> Iterator[Callable[..., EdgecamServer]]:
    """Starts EdgecamServers on free ports (settings as keyword arguments); all stop after the test."""
    servers: list[EdgecamServer] = []

    def make(**settings: object) -> EdgecamServer:
        values: dict[str, object] = {"grpc_port": 0, "metrics_port": 0, **settings}
        server = EdgecamServer(ServerSettings(**values))  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def repo(tmp_path: Path, onnx_builder: Callable[..., Path]) -> Path:
    """A model repository holding tiny/1/model.onnx (one output, logits); tests add versions."""
    root = tmp_path / "repo"
    (root / "tiny" / "1").mkdir(parents=True)
    onnx_builder(root / "tiny" / "1" / "model.onnx")
    return root
