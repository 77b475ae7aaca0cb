"""Shadow mode: agreement and drift against a reference model, sampling, back-pressure, artifacts."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgecam.compiler.artifact import Manifest, TargetInfo, write_artifact
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing
from edgecam.server.errors import ModelLoadError
from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.shadow import ShadowChecker, ShadowConfig, artifact_dir

CAMERA = "cam0"
Build = Callable[..., Path]


def _feeds(samples: tuple[np.ndarray, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{"image": (image.astype(np.float32) / 255.0).reshape(1, 1, 28, 28)} for image in samples[0]]


def _offer_all(checker: ShadowChecker, model: LoadedModel, feeds: list[dict], n: int) -> int:
    """Run the primary like the pipeline does and offer each inference; how many were taken."""
    taken = 0
    for i in range(n):
        inputs = feeds[i % len(feeds)]
        taken += checker.offer(inputs, model.runtime.run(inputs)["logits"])
    return taken


def _value(registry: CollectorRegistry, name: str, model: str = "tiny") -> float | None:
    return registry.get_sample_value(name, {"camera": CAMERA, "model": model})


def _wait_samples(registry: CollectorRegistry, n: int, model: str = "tiny", deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while (_value(registry, "edgecam_shadow_samples_total", model) or 0) < n:
        assert time.monotonic() < deadline, f"shadow worker compared fewer than {n} samples in {deadline_s} s"
        time.sleep(0.01)


def _swap_classes(path: Path, out: Path, a: int, b: int) -> Path:
    """A copy of the tiny model whose templates for classes a and b are swapped: it disagrees on those."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "W":
            weights = numpy_helper.to_array(init).copy()
            weights[:, [a, b]] = weights[:, [b, a]]
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(weights, "W"))
    onnx.save(model, str(out))
    return out


def _slow_reference(tiny: Path, out: Path, rounds: int = 4) -> Path:
    """The tiny model plus `rounds` dead-weight 784x784 matmuls that depend on the input (~0.1 s)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(tiny))
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([784, 1], np.int64), "col_shape"),
            numpy_helper.from_array(np.array([1, 784], np.int64), "row_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
    )
    graph.output[0].name = "logits_fast"
    for node in graph.node:  # the template matcher now writes logits_fast; logits = that + 0·work
        node.output[:] = ["logits_fast" if o == "logits" else o for o in node.output]
    nodes = [
        helper.make_node("Reshape", ["image", "col_shape"], ["col"]),
        helper.make_node("Reshape", ["image", "row_shape"], ["row"]),
        helper.make_node("MatMul", ["col", "row"], ["work0"]),
    ]
    for k in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"work{k}", "work0"], [f"work{k + 1}"]))
    nodes += [
        helper.make_node("ReduceMax", [f"work{rounds}"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["logits_fast", "nothing"], ["logits"]),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]))
    onnx.save(model, str(out))
    return out


@pytest.fixture
def tiny(make_onnx: Build) -> tuple[Path, LoadedModel]:
    path = make_onnx("tiny.onnx")
    return path, load_model(path)


def test_same_model_as_reference_agrees_exactly(
    tiny: tuple[Path, LoadedModel], samples: tuple, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    path, model = tiny
    checker = ShadowChecker(CAMERA, model, ShadowConfig(fraction=1.0, queue=64, reference=path), metrics)
    assert _value(registry, "edgecam_shadow_samples_total") == 0  # exported from the start
    assert _value(registry, "edgecam_shadow_agreement_ratio") is None  # absent before the first sample
    checker.start()
    try:
        assert _offer_all(checker, model, _feeds(samples), 40) == 40
        _wait_samples(registry, 40)
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_agreements_total") == 40
    assert _value(registry, "edgecam_shadow_agreement_ratio") == 1.0
    assert _value(registry, "edgecam_shadow_score_drift_count") == 40
    assert _value(registry, "edgecam_shadow_score_drift_sum") == pytest.approx(0.0, abs=1e-6)
    drift_le_001 = registry.get_sample_value(
        "edgecam_shadow_score_drift_bucket", {"camera": CAMERA, "model": "tiny", "le": "0.001"}
    )
    assert drift_le_001 == 40
    assert _value(registry, "edgecam_shadow_skipped_total") == 0


def test_reference_with_other_weights_disagrees(
    tiny: tuple[Path, LoadedModel],
    samples: tuple,
    tmp_path: Path,
    registry: CollectorRegistry,
    metrics: EdgecamMetrics,
) -> None:
    path, model = tiny
    # Classes 0 and 1 swapped: 2 of the 10 sample images (cycled evenly) disagree → exactly 0.8.
    swapped = _swap_classes(path, tmp_path / "swapped.onnx", 0, 1)
    checker = ShadowChecker(CAMERA, model, ShadowConfig(fraction=1.0, queue=64, reference=swapped), metrics)
    checker.start()
    try:
        _offer_all(checker, model, _feeds(samples), 50)
        _wait_samples(registry, 50)
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_agreement_ratio") == pytest.approx(0.8)
    assert _value(registry, "edgecam_shadow_agreements_total") == 40
    # A disagreeing sample moves softmax probability mass between two classes: a large drift.
    assert _value(registry, "edgecam_shadow_score_drift_sum") > 10 * 0.1
    big = registry.get_sample_value(
        "edgecam_shadow_score_drift_bucket", {"camera": CAMERA, "model": "tiny", "le": "0.1"}
    )
    assert big == 40  # the 40 agreeing samples have no drift at all, the 10 others more than 0.1


def test_fraction_samples_about_that_share(
    tiny: tuple[Path, LoadedModel], samples: tuple, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    path, model = tiny
    config = ShadowConfig(fraction=0.25, queue=512, reference=path, seed=7)
    checker = ShadowChecker(CAMERA, model, config, metrics)
    checker.start()
    try:
        taken = _offer_all(checker, model, _feeds(samples), 400)
        # Binomial(400, 0.25): mean 100, σ = √(400·0.25·0.75) ≈ 8.7; ±4σ fails for no fair seed.
        assert 65 <= taken <= 135
        _wait_samples(registry, taken)
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_samples_total") == taken  # the queue never filled
    # The sampler is seeded: the same seed takes the same frames.
    twin = ShadowChecker(CAMERA, model, config, EdgecamMetrics(CollectorRegistry(), process=False))
    twin.start()
    try:
        assert _offer_all(twin, model, _feeds(samples), 400) == taken
    finally:
        twin.stop()


def test_slow_reference_skips_and_never_blocks(
    tiny: tuple[Path, LoadedModel],
    samples: tuple,
    tmp_path: Path,
    registry: CollectorRegistry,
    metrics: EdgecamMetrics,
) -> None:
    path, model = tiny
    slow = _slow_reference(path, tmp_path / "slow.onnx")
    checker = ShadowChecker(CAMERA, model, ShadowConfig(fraction=1.0, queue=1, reference=slow), metrics)
    feeds = _feeds(samples)
    primary = [model.runtime.run(f)["logits"] for f in feeds]
    checker.start()
    try:
        started = time.perf_counter()
        taken = sum(checker.offer(feeds[i % 10], primary[i % 10]) for i in range(200))
        elapsed = time.perf_counter() - started
        assert elapsed < 0.05, f"200 offers took {elapsed * 1000:.1f} ms"
        skipped = _value(registry, "edgecam_shadow_skipped_total")
        assert skipped == 200 - taken and skipped >= 190
        _wait_samples(registry, taken)  # what was taken is still compared, and agrees
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_agreement_ratio") == 1.0


def test_stop_is_quick_and_later_offers_are_ignored(
    tiny: tuple[Path, LoadedModel],
    samples: tuple,
    tmp_path: Path,
    registry: CollectorRegistry,
    metrics: EdgecamMetrics,
) -> None:
    path, model = tiny
    slow = _slow_reference(path, tmp_path / "slow.onnx")
    checker = ShadowChecker(CAMERA, model, ShadowConfig(fraction=1.0, queue=4, reference=slow), metrics)
    feeds = _feeds(samples)
    assert not checker.offer(feeds[0], np.zeros((1, 10), np.float32))  # not started: ignored
    checker.start()
    _offer_all(checker, model, feeds, 20)  # the worker is busy and the queue is full
    started = time.perf_counter()
    checker.stop(timeout=2.0)
    assert time.perf_counter() - started < 1.0  # at most the sample in progress, not the queue
    counts = [_value(registry, f"edgecam_shadow_{c}_total") for c in ("samples", "skipped")]
    assert _offer_all(checker, model, feeds, 20) == 0
    time.sleep(0.3)  # nothing left running that could still count
    assert [_value(registry, f"edgecam_shadow_{c}_total") for c in ("samples", "skipped")] == counts


def _onnxruntime_artifact(onnx_file: Path, out: Path) -> Path:
    manifest = Manifest(
        model_name="tiny",
        runtime="onnxruntime",
        library="lib/model.onnx",  # a library below the artifact root: the dir is still found
        target=TargetInfo(name=platform.machine(), arch=platform.machine()),
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[1, 10])],
        preprocessing=Preprocessing(height=28, width=28, color="GRAY"),
    )
    files = {"lib/model.onnx": onnx_file, "reference.onnx": onnx_file}
    return write_artifact(out, manifest, files).path


def test_artifact_reference_is_found_and_follows_reloads(
    tiny: tuple[Path, LoadedModel],
    samples: tuple,
    tmp_path: Path,
    registry: CollectorRegistry,
    metrics: EdgecamMetrics,
) -> None:
    path, plain = tiny
    art = _onnxruntime_artifact(path, tmp_path / "art")
    model = load_model(art)
    assert artifact_dir(model) == art
    checker = ShadowChecker(CAMERA, plain, ShadowConfig(fraction=1.0), metrics)
    assert not checker.enabled  # a plain .onnx has no reference unless one is configured
    checker.start()
    try:
        assert _offer_all(checker, plain, _feeds(samples), 5) == 0
        checker.set_model(model)  # a hot reload to an artifact: its reference.onnx is used
        assert checker.enabled
        assert _offer_all(checker, model, _feeds(samples), 5) == 5
        _wait_samples(registry, 5)
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_agreement_ratio") == 1.0


def test_compiled_tvm_artifact_uses_its_reference(
    make_onnx: Build, samples: tuple, tmp_path: Path, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    from edgecam.compiler.build import compile_model

    artifact = compile_model(make_onnx("tiny.onnx"), "x86_64", tmp_path / "art")
    model = load_model(artifact.path, name="tiny-tvm")
    assert model.runtime.name == "tvm" and artifact_dir(model) == artifact.path
    checker = ShadowChecker(CAMERA, model, ShadowConfig(fraction=1.0, queue=32), metrics)
    assert checker.enabled
    checker.start()
    try:
        assert _offer_all(checker, model, _feeds(samples), 20) == 20
        _wait_samples(registry, 20, model="tiny-tvm")
    finally:
        checker.stop()
    assert _value(registry, "edgecam_shadow_agreement_ratio", "tiny-tvm") == 1.0
    assert _value(registry, "edgecam_shadow_score_drift_sum", "tiny-tvm") < 20 * 1e-4


def test_configured_reference_that_cannot_load_is_refused(
    tiny: tuple[Path, LoadedModel], tmp_path: Path, metrics: EdgecamMetrics
) -> None:
    _, model = tiny
    with pytest.raises(ModelLoadError, match=r"absent\.onnx"):
        ShadowChecker(CAMERA, model, ShadowConfig(reference=tmp_path / "absent.onnx"), metrics)
