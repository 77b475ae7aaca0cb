"""Benchmark: EfficientNet-Lite0 int8 (edgecam's `int8` pass) against fp32, under ONNX Runtime.

    .venv/bin/python bench/bench_int8_efficientnet.py [--runs 200] [--threads 2] [--weight-rounding adaround]
        [--reduce-range]

Applies models/efficientnet_lite0/recipes/int8.yaml (calibrated on OpenCV's sample photos) and
measures, on the recipe's evaluation set (scikit-image photos + vtest.avi frames, no labels):
top-1 agreement of int8 with fp32, with ORT's exact int8 kernels and with its default ones (which
saturate on x86 without VNNI); for scale, the agreement fp16 reaches and the agreement of fp32 with
itself on the same frames re-encoded as JPEG (quality 95). Then ONNX Runtime latency (median, p99)
of each model, interleaved in rounds so machine load hits them alike. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, save_record
from timing import in_turns, summary

ROUNDS = 4
CONFIDENT = 0.5  # fp32 softmax top-1 probability above which a prediction counts as confident


def latency(sessions: dict[str, Any], feed: dict[str, np.ndarray], runs: int) -> dict[str, dict[str, float]]:
    """Median and p99 (ms) per session, the sessions taking turns in ROUNDS rounds."""
    calls = {name: (lambda r=runner: r.run(None, feed)) for name, runner in sessions.items()}
    return {name: summary(ms) for name, ms in in_turns(calls, runs, ROUNDS, warmup=10).items()}


def photo_count(recipe: Path) -> int:
    """How many evaluation images come before the video frames (the recipe's first part)."""
    from edgecam.compiler.datasets import ConcatData, load_dataset
    from edgecam.compiler.recipe import load_recipe

    loaded, base_dir = load_recipe(recipe)
    if not isinstance(loaded.evaluation, ConcatData):
        raise SystemExit(f"{recipe}: expected `evaluation: {{kind: concat, parts: [photos, video]}}`")
    return len(load_dataset(loaded.evaluation.parts[0], base_dir))


def jpeg_floor(model: Any, recipe: Path, reference: np.ndarray) -> float:
    """Agreement of fp32 with itself when every evaluation image is JPEG-encoded (q95) first: how much
    a change no one would call a different picture moves the top-1 class on this set."""
    import cv2

    from edgecam.compiler.datasets import load_dataset
    from edgecam.compiler.recipe import load_recipe
    from edgecam.models.efficientnet_lite0 import PREPROCESSING
    from edgecam.models.efficientnet_lite0.agreement import agreement, logits, session
    from edgecam.preprocessing import preprocess

    loaded, base_dir = load_recipe(recipe)
    feeds = []
    for sample in load_dataset(loaded.evaluation, base_dir):
        image = sample.image if sample.image.ndim == 3 else cv2.cvtColor(sample.image, cv2.COLOR_GRAY2BGR)
        _, data = cv2.imencode(".jpg", image[:, :, :3], [cv2.IMWRITE_JPEG_QUALITY, 95])
        feeds.append({"image": preprocess(cv2.imdecode(data, cv2.IMREAD_COLOR), PREPROCESSING)})
    return agreement(reference, logits(session(model), feeds))


def unfused_session(model: Any) -> Any:
    """ONNX Runtime with graph optimizations off: QDQ runs as written, in float, no int8 kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def agreements(run: Any, fp16: Any, photos: int) -> tuple[dict[str, Any], np.ndarray]:
    from edgecam.models.efficientnet_lite0.agreement import agreement, logits, relative_logit_error, session

    reference = logits(session(run.fp32), run.evaluation)
    exact = logits(session(run.compressed), run.evaluation)
    default = logits(session(run.compressed, exact_int8=False), run.evaluation)
    simulated = logits(unfused_session(run.compressed), run.evaluation)
    probs = np.exp(reference - reference.max(axis=1, keepdims=True))
    confident = (probs / probs.sum(axis=1, keepdims=True)).max(axis=1) >= CONFIDENT
    result = {
        "images": len(run.evaluation),
        "photos": photos,
        "calibration_images": len(run.calibration),
        "int8": agreement(reference, exact),
        "int8_photos": agreement(reference[:photos], exact[:photos]),
        "int8_video": agreement(reference[photos:], exact[photos:]),
        "int8_ort_default_kernels": agreement(reference, default),
        "confident_images": int(confident.sum()),
        "int8_confident": agreement(reference[confident], exact[confident]),
        "fp16": agreement(reference, logits(session(fp16), run.evaluation)),
        "int8_max_abs_logit_diff": float(np.abs(exact - reference).max()),
        # The QDQ graph's own arithmetic (no fused kernels): what quantization costs, kernels aside.
        "int8_simulated": agreement(reference, simulated),
        "int8_kernels_vs_simulated": agreement(simulated, exact),
        "int8_relative_logit_error": relative_logit_error(reference, simulated),
    }
    return result, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument(
        "--weight-rounding",
        choices=["recipe", "nearest", "adaround"],
        default="recipe",
        help="override the recipe's int8 `weight_rounding` (the result file is then named for it)",
    )
    parser.add_argument(
        "--reduce-range",
        action="store_true",
        help="7-bit weights (the int8 pass's `reduce_range`: what x86 CPUs without VNNI compute fastest "
        "exactly); the result file is then named for it",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("edgecam.compiler.passes.adaround").setLevel(logging.INFO)  # a line per layer

    import onnxruntime as ort

    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
    from edgecam.models.efficientnet_lite0 import export
    from edgecam.models.efficientnet_lite0.agreement import RECIPE, apply_recipe, session

    info = machine(onnxruntime=ort.__version__, onnxruntime_threads=args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_path = args.workdir / "efficientnet_lite0.onnx"
    if not model_path.is_file():
        export.export(model_path)
    started = time.perf_counter()
    options: dict[str, Any] = {}
    if args.weight_rounding != "recipe":
        options["weight_rounding"] = args.weight_rounding
    if args.reduce_range:
        options["reduce_range"] = True
    run = apply_recipe(model_path, args.workdir / "int8-work", options=options)
    quantize_seconds = time.perf_counter() - started
    fp16 = (
        create_pass(parse_pass_config({"kind": "fp16"})).apply(run.fp32, PassContext([], args.workdir)).model
    )
    photos = photo_count(RECIPE)
    agree, reference = agreements(run, fp16, photos)
    agree["fp32_jpeg_q95"] = jpeg_floor(run.fp32, RECIPE, reference)
    sessions = {
        "fp32": session(run.fp32, args.threads),
        "int8": session(run.compressed, args.threads),
        "int8_ort_default_kernels": session(run.compressed, args.threads, exact_int8=False),
        "fp16": session(fp16, args.threads),
    }
    times = latency(sessions, run.evaluation[0], args.runs)
    info["loadavg_after"] = os.getloadavg()[0]
    record = {
        "benchmark": "bench_int8_efficientnet",
        "model": "efficientnet_lite0",
        "recipe": str(RECIPE.relative_to(Path(__file__).resolve().parents[1])),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "quantize_seconds": round(quantize_seconds, 1),
        "pass_options": options,
        "agreement": agree,
        "latency": times,
        "int8_speedup": times["fp32"]["median_ms"] / times["int8"]["median_ms"],
        "int8_nodes": len(run.changes["quantized_nodes"]),
        "excluded_nodes": run.changes["excluded_nodes"],
        "initializer_bytes": run.changes["initializer_bytes"],
    }
    report(record)
    names = {"weight_rounding": args.weight_rounding, "reduce_range": "reduce-range"}
    save_record("-".join(["bench_int8_efficientnet", *(names[k] for k in options)]), record)


def report(record: dict[str, Any]) -> None:
    agree, m = record["agreement"], record["machine"]
    print(f"{record['date']}  {m['cpu']} ({m['cores']} cores, {' '.join(m['isa'])}), ORT {m['onnxruntime']}")
    frames = agree["images"] - agree["photos"]
    print(
        f"top-1 agreement with fp32 on {agree['images']} images ({agree['photos']} photos + {frames} "
        f"video frames; calibrated on {agree['calibration_images']} others):"
    )
    keys = ("int8", "int8_photos", "int8_video", "int8_ort_default_kernels", "int8_simulated")
    for key in (*keys, "int8_kernels_vs_simulated", "fp16", "fp32_jpeg_q95"):
        print(f"  {key:<26} {agree[key]:7.2%}")
    print(
        f"  int8 on the {agree['confident_images']} images fp32 is ≥{CONFIDENT:.0%} sure of: "
        f"{agree['int8_confident']:.2%}"
    )
    print(
        f"  int8 (simulated) logit error, relative to fp32's spread: {agree['int8_relative_logit_error']:.3f}"
    )
    for name, r in record["latency"].items():
        print(f"{name:<26} median {r['median_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms   ({r['runs']} runs)")
    print(f"int8 speed-up over fp32 (median): {record['int8_speedup']:.2f}x")


if __name__ == "__main__":
    main()
