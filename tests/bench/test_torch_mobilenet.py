"""bench/torch_mobilenet.py runs the same network as shapes.mobilenet_v2's ONNX model: PyTorch's side of
bench_cuda.py, checked here on the CPU against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import each other as top-level modules
    import shapes
    import torch_mobilenet

    return shapes, torch_mobilenet


def test_torch_mobilenet_matches_onnxruntime(bench_modules: tuple) -> None:
    import onnxruntime as ort
    import torch

    shapes, torch_mobilenet = bench_modules
    model = shapes.mobilenet_v2(seed=3)
    net = torch_mobilenet.from_onnx(model)
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": image})
    with torch.inference_mode():
        got = net(torch.from_numpy(image)).numpy()
    assert got.shape == expected.shape == (1, 1000)
    scale = float(np.abs(expected).max())
    assert scale > 0.1  # random weights still give logits worth comparing
    assert float(np.abs(got - expected).max()) <= 1e-4 * scale
    assert int(got.argmax()) == int(expected.argmax())


def test_another_network_is_refused(bench_modules: tuple) -> None:
    shapes, torch_mobilenet = bench_modules
    with pytest.raises(ValueError, match="convolutions"):
        torch_mobilenet.from_onnx(shapes.resnet18())
