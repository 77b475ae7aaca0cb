"""The bundled model is what its files claim: small, labelled, and accurate through the serving path."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecam.models import fashion_cnn
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing, preprocess


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(fashion_cnn.onnx_path())).metadata_props}


def test_onnx_is_small_and_self_describing(metadata: dict[str, str]) -> None:
    assert fashion_cnn.onnx_path().stat().st_size < 1_000_000
    assert metadata["edgecam.model_name"] == fashion_cnn.MODEL_NAME
    assert json.loads(metadata["edgecam.labels"]) == fashion_cnn.LABELS
    spec = Preprocessing.model_validate_json(metadata["edgecam.preprocessing"])
    assert (spec.height, spec.width, spec.color) == (28, 28, "GRAY")
    assert Postprocessing.model_validate_json(metadata["edgecam.postprocessing"]).apply_softmax


def test_samples_are_real_test_images() -> None:
    images, labels = fashion_cnn.load_samples()
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1000,) and set(labels.tolist()) == set(range(10))


def test_accuracy_through_the_serving_preprocessing(metadata: dict[str, str]) -> None:
    spec = Preprocessing.model_validate_json(metadata["edgecam.preprocessing"])
    session = ort.InferenceSession(str(fashion_cnn.onnx_path()), providers=["CPUExecutionProvider"])
    images, labels = fashion_cnn.load_samples()
    hits = sum(
        int(session.run(None, {"image": preprocess(image, spec)})[0].argmax() == label)
        for image, label in zip(images, labels, strict=True)
    )
    assert hits / len(labels) >= 0.88


def test_recorded_accuracy_meets_the_bar() -> None:
    metrics = json.loads((fashion_cnn.onnx_path().parent / "metrics.json").read_text())
    assert metrics["test_images"] == 10_000
    assert metrics["test_top1"] >= 0.90, "retrain: python -m edgecam.models.fashion_cnn.train"


def test_full_test_set_reader_matches_the_samples() -> None:
    if not fashion_cnn.DATASET_ROOT.exists():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    images, labels = fashion_cnn.load_split("t10k")
    samples, sample_labels = fashion_cnn.load_samples()
    assert images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(images[:1000], samples)
    np.testing.assert_array_equal(labels[:1000], sample_labels)
