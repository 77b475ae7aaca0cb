"""The int8 recipe on EfficientNet-Lite0, and top-1 agreement with fp32 on the recipe's real images.

Shared by bench/bench_int8_efficientnet.py (which reports the numbers) and
tests/models/test_efficientnet_lite0.py (which holds them): both measure exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecam.compiler.passes.base import Feeds
from edgecam.ort_options import session_options

RECIPE = Path(__file__).resolve().parent / "recipes" / "int8.yaml"


@dataclass
class RecipeRun:
    fp32: Any  # onnx.ModelProto
    compressed: Any  # onnx.ModelProto
    evaluation: list[Feeds]
    calibration: list[Feeds]
    changes: dict[str, Any]


def apply_recipe(
    model_path: Path, work_dir: Path, recipe_path: Path = RECIPE, options: dict[str, Any] | None = None
) -> RecipeRun:
    """Load the recipe's data through the model's preprocessing (as `edgecam compress` does) and apply
    its single pass, with `options` replacing fields of that pass's config (to measure a variant
    without editing the recipe); refuses a calibration set that shares an image with the evaluation set."""
    from edgecam.compiler.compress import load_data
    from edgecam.compiler.errors import RecipeError
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
    from edgecam.compiler.recipe import load_recipe

    recipe, base_dir = load_recipe(recipe_path)
    source = load_onnx(Path(model_path))
    data, calibration = load_data(recipe, base_dir, source)
    seen = {feed_digest(feed) for feed in data.feeds}
    if any(feed_digest(feed) in seen for feed in calibration):
        raise RecipeError(f"{recipe_path}: calibration and evaluation share images")
    if len(recipe.passes) != 1:
        raise RecipeError(f"{recipe_path}: expected one pass, got {[p.kind for p in recipe.passes]}")
    context = PassContext(calibration, Path(work_dir), seed=recipe.seed)
    config = recipe.passes[0]
    if options:
        config = parse_pass_config({**config.model_dump(), **options})
    result = create_pass(config).apply(source.proto, context)
    return RecipeRun(source.proto, result.model, data.feeds, calibration, result.changes)


def session(model: Any, threads: int = 2, exact_int8: bool = True) -> Any:
    """An ONNX Runtime CPU session. `exact_int8` sets session.x64quantprecision: on x86 CPUs without
    VNNI, ORT's default u8×s8 kernels add pairs of products in int16 and saturate; this keeps int32."""
    import onnxruntime as ort

    options = session_options(threads, exact_int8)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def logits(runner: Any, feeds: Sequence[Feeds]) -> np.ndarray:
    return np.concatenate([runner.run(None, dict(feed))[0] for feed in feeds])


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of inputs whose top-1 class is the same in both [N, classes] score arrays."""
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def relative_logit_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """‖candidate − reference‖ over the spread of the reference's [N, classes] scores around each
    row's mean: how far a compressed model's logits moved, which (unlike top-1 agreement) near-tie
    images do not make jump."""
    spread = np.linalg.norm(reference - reference.mean(axis=1, keepdims=True))
    return float(np.linalg.norm(candidate - reference) / spread)


def feed_digest(feed: Feeds) -> str:
    import hashlib

    return hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in feed.values())).hexdigest()
