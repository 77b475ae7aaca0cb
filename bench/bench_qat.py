"""Benchmark: quantization-aware training of the bundled CNN with 7-bit weights, against fp32 and
post-training int8 (7-bit) in the same run.

    .venv/bin/python bench/bench_qat.py [--train 60000] [--epochs 1] [--lr 1e-4]

Both int8 models go through `edgecam compress` (compiler/compress.py): post-training is the `int8`
pass with `reduce_range: true` (7-bit weights, 256 calibration images), QAT the `qat` pass fine-tuning
on the first `--train` training images. Top-1 on all 10,000 Fashion-MNIST test images; the QAT result
is compiled for x86_64 (verified against ONNX Runtime) and its layers are checked to be integer
ones (compiler/lowering/qdq_to_integer.py). Issue 19's target: 7-bit QAT within 0.2 pt of fp32,
compiled to integer kernels. The record goes to bench/results/bench_qat-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_info import machine, save_record, stamp
from reliability import target

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fashion_cnn" / "fashion_cnn.onnx"
TEST = {"kind": "fashion_mnist", "split": "test", "limit": 10000}  # all of them


def compress_case(passes: list[dict[str, Any]], extra: dict[str, Any], out: Path) -> dict[str, Any]:
    """The recipe measured as `compress` measures it, its result compiled for x86_64 (verified against
    ONNX Runtime) and timed as a camera runs it, and what the int8 lowering folds in it."""
    import onnx

    from edgecam.compiler.artifact_figures import measure_artifact
    from edgecam.compiler.build import compile_model
    from edgecam.compiler.compress import measure_recipe
    from edgecam.compiler.evaluate import MeasureOptions
    from edgecam.compiler.recipe import parse_recipe

    recipe = parse_recipe({"evaluation": TEST, "max_accuracy_drop": 100, "passes": passes, **extra})
    options = MeasureOptions(runs=50, tvm=False)
    started = time.perf_counter()
    measured = measure_recipe(MODEL, recipe, ROOT, options=options)
    seconds = time.perf_counter() - started
    original, final = measured.report.steps[0], measured.report.steps[-1]
    assert original.top1 is not None and final.top1 is not None  # fashion_mnist is labelled
    out.mkdir(parents=True)
    onnx.save(measured.model, str(out / "model.onnx"))
    artifact = compile_model(out / "model.onnx", "x86_64", out / "artifact")
    verification = artifact.manifest.verification
    return {
        "passes": passes,
        "top1_fp32": original.top1,
        "top1": final.top1,
        "drop_pp": round((original.top1 - final.top1) * 100, 4),
        "weight_bytes": [original.weight_bytes, final.weight_bytes],
        "ort_p50_ms": [
            original.ort.p50_ms if original.ort else None,
            final.ort.p50_ms if final.ort else None,
        ],
        "artifact": measure_artifact(artifact, final.weight_bytes, options).model_dump(mode="json"),
        "verification": verification.model_dump(mode="json") if verification else None,
        "integer_layers": folding_of(measured.model),
        "changes": final.changes,
        "seconds": round(seconds, 1),
    }


def folding_of(model: Any) -> dict[str, Any]:
    from tvm.relax.frontend.onnx import from_onnx

    from edgecam.compiler.lowering.qdq_to_integer import fold_qdq

    _, folding = fold_qdq(from_onnx(model, keep_params_in_input=False))
    return {"folded": dict(folding.folded), "left_float": folding.left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=60000, help="training images QAT fine-tunes on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--distill", action="store_true", help="fine-tune on the fp32 model's soft targets (distillation:)"
    )
    args = parser.parse_args()
    training = {
        "data": {"kind": "fashion_mnist", "split": "train", "limit": args.train},
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": 128,
        "patience": None,
    }
    with tempfile.TemporaryDirectory(prefix="bench-qat-") as tmp:
        training["checkpoint_dir"] = str(Path(tmp) / "checkpoints")
        ptq = compress_case(
            [{"kind": "int8", "reduce_range": True}],
            {"calibration": {"kind": "fashion_mnist", "split": "train", "limit": 256}},
            Path(tmp) / "ptq",
        )
        extra: dict[str, Any] = {"training": training}
        if args.distill:  # the teacher is the fp32 model itself: the recipe's model
            extra["distillation"] = {}
        qat = compress_case([{"kind": "qat", "weight_bits": 7}], extra, Path(tmp) / "qat")
    created, _ = stamp()
    record = {
        "created": created,
        "machine": machine(),
        "images": 10000,
        "training": training | {"checkpoint_dir": None},
        "distillation_from_fp32": args.distill,
        "post_training_int8_7bit": ptq,
        "qat_7bit": qat,
        "targets": [
            target("qat_7bit_top1_drop_vs_fp32", qat["drop_pp"], "<=", 0.2, "pp"),
            # "compiled to integer kernels": conv/matmul layers the lowering leaves in float
            target("qat_7bit_layers_left_float", len(qat["integer_layers"]["left_float"]), "<=", 0, "layers"),
        ],
    }
    save_record("bench_qat", record)
    top1 = {"fp32": qat["top1_fp32"], "PTQ 7-bit": ptq["top1"], "QAT 7-bit": qat["top1"]}
    print("  ".join(f"{name} {value * 100:.2f}%" for name, value in top1.items()))


if __name__ == "__main__":
    main()
