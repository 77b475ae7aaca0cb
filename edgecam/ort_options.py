"""The ONNX Runtime session options every edgecam session uses: the compiler's evaluation and
verification, and the camera's reference runtime, so they all compute a quantized model alike."""

from __future__ import annotations

from typing import Any

# On x86 CPUs without VNNI, ONNX Runtime's default u8×s8 kernels add pairs of products in int16 and
# saturate (vpmaddubsw): seen on EfficientNet-Lite0 int8, top-1 agreement with fp32 77% instead of 94%.
# This entry keeps exact int32 sums; it changes nothing for float models or on VNNI/ARM CPUs.
EXACT_INT8 = ("session.x64quantprecision", "1")


def session_options(intra_op_threads: int = 0, exact_int8: bool = True) -> Any:
    """onnxruntime.SessionOptions: `intra_op_threads` (0: every core), one inter-op thread, quiet logs,
    exact int8 arithmetic unless `exact_int8` is False (only to measure what the default kernels do)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are noise
    if exact_int8:
        options.add_session_config_entry(*EXACT_INT8)
    return options
