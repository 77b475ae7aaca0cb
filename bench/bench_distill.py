"""Benchmark: knowledge distillation of the bundled CNN into a student with under 1/4 of its MACs.

    .venv/bin/python bench/bench_distill.py [--width 0.45] [--epochs 2] [--train 60000] [--seeds 0 1 2]

The teacher is the bundled CNN. The student is the same architecture at `--width` of its channels
(edgecam.models.architectures), trained from scratch by the `distill` pass for the same epochs on the
same images twice per seed: alone (alpha 0: the labels' cross-entropy only) and distilled (the
teacher's soft targets at `--temperature` with weight `--alpha`, plus the labels). Top-1 on all
10,000 Fashion-MNIST test images under ONNX Runtime. Issue 19's target: the distilled student closes
at least half of the gap between the student alone and the teacher (means over the seeds, ± sample
standard deviation). The record goes to bench/results/bench_distill-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_info import machine, save_record, stamp
from reliability import target

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fashion_cnn" / "fashion_cnn.onnx"


def test_set(source: Any) -> Any:
    from pydantic import TypeAdapter

    from edgecam.compiler.datasets import DatasetConfig, labels_of, load_dataset, to_feeds
    from edgecam.compiler.evaluate import EvalSet

    config = TypeAdapter(DatasetConfig).validate_python(
        {"kind": "fashion_mnist", "split": "test", "limit": 10000}
    )
    samples = load_dataset(config, ROOT)
    return EvalSet(to_feeds(samples, source.preprocessing, source.inputs[0].name), labels_of(samples))


def train_student(teacher: Any, args: argparse.Namespace, seed: int, alpha: float, work: Path) -> Any:
    """The `distill` pass on a fresh student: alpha 0 trains it on the labels alone."""
    from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
    from edgecam.compiler.training.config import TrainingConfig
    from edgecam.compiler.training.trainer import Trainer
    from edgecam.models.fashion_cnn.train import PREPROCESSING

    training = TrainingConfig.model_validate(
        {
            "data": {"kind": "fashion_mnist", "split": "train", "limit": args.train},
            "epochs": args.epochs,
            "batch_size": 128,
            "lr": args.lr,
            "patience": None,
            "checkpoint_dir": str(work / "checkpoints"),
        }
    )
    trainer = Trainer(training, PREPROCESSING, "image", ROOT, seed, progress=lambda line: None)
    config = {
        "kind": "distill",
        "architecture": "fashion_cnn",
        "width": args.width,
        "temperature": args.temperature,
        "alpha": alpha,
    }
    return create_pass(parse_pass_config(config)).apply(teacher, PassContext([], work, training=trainer))


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    import onnx

    from edgecam.compiler.evaluate import count_macs, predictions, top1
    from edgecam.compiler.frontends.onnx import load_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.45)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=60000, help="training images")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    source = load_onnx(MODEL)
    teacher = onnx.load(str(MODEL))
    data = test_set(source)
    teacher_top1 = top1(predictions(teacher, data.feeds), data.labels)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        for seed in args.seeds:
            for name, alpha in (("alone", 0.0), ("distilled", args.alpha)):
                started = time.perf_counter()
                result = train_student(teacher, args, seed, alpha, Path(tmp) / f"{name}-{seed}")
                accuracy = top1(predictions(result.model, data.feeds), data.labels)
                runs.append(
                    {
                        "seed": seed,
                        "student": name,
                        "alpha": alpha,
                        "top1": accuracy,
                        "training": result.changes["training"],
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(
                    f"seed {seed} {name}: top-1 {accuracy * 100:.2f}% in {runs[-1]['seconds']:.0f} s",
                    flush=True,
                )
        student_macs = count_macs(result.model)
    alone = mean_sd([run["top1"] for run in runs if run["student"] == "alone"])
    distilled = mean_sd([run["top1"] for run in runs if run["student"] == "distilled"])
    gap = teacher_top1 - alone["mean"]
    closed = (distilled["mean"] - alone["mean"]) / gap if gap > 0 else float("nan")
    teacher_macs = count_macs(teacher)
    created, _ = stamp()
    record = {
        "created": created,
        "machine": machine(),
        "images": len(data.feeds),
        "settings": vars(args),
        "teacher": {"top1": teacher_top1, "macs": teacher_macs},
        "student": {"macs": student_macs, "macs_ratio": student_macs / teacher_macs},
        "alone": alone,
        "distilled": distilled,
        "gap_closed": closed,
        "runs": runs,
        "targets": [
            target("student_macs_over_teacher", student_macs / teacher_macs, "<=", 0.25, "ratio"),
            target("top1_gap_closed_by_distillation", closed, ">=", 0.5, "fraction"),
        ],
    }
    save_record("bench_distill", record)
    print(
        f"teacher {teacher_top1 * 100:.2f}%; student ({student_macs / teacher_macs:.2f}× MACs) alone "
        f"{alone['mean'] * 100:.2f} ± {alone['sd'] * 100:.2f}%, distilled {distilled['mean'] * 100:.2f} ± "
        f"{distilled['sd'] * 100:.2f}%: {closed * 100:.0f}% of the gap closed"
    )


if __name__ == "__main__":
    main()
