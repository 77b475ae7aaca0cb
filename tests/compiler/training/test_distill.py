"""Knowledge distillation: the loss against a hand-computed value, the `distill` pass training a smaller
student (from an ONNX file or an architecture), the recipe's teacher reaching every fine-tune, and a
teacher that does not match the student refused by name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.errors import RecipeError
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.recipe import parse_recipe

from .conftest import SIZE, build_mlp, make_images


def test_the_kd_loss_equals_a_hand_computed_value() -> None:
    """Two samples, T = 2, α = 0.75. By hand (softmax at T, KL of the teacher's from the student's,
    averaged over the batch, times T²; cross-entropy at T = 1 against the labels):
    KL = 0.232826093…, CE = 0.279645870…, 0.75·4·KL + 0.25·CE = 0.768389747…"""
    import torch

    from edgecam.compiler.training.distill import kd_loss

    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 2])
    assert float(kd_loss(student, teacher, labels, 2.0, 0.75)) == pytest.approx(0.7683897474923262, rel=1e-12)
    # α = 0: plain cross-entropy; α = 1: T² times the KL alone.
    assert float(kd_loss(student, teacher, labels, 2.0, 0.0)) == pytest.approx(0.27964587026445276)
    assert float(kd_loss(student, teacher, labels, 2.0, 1.0)) == pytest.approx(4 * 0.23282609330873766)
    # A student that equals its teacher has no soft-target loss left, at any temperature.
    assert float(kd_loss(teacher, teacher, labels, 7.0, 1.0)) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(float(kd_loss(student * 100, teacher, labels, 0.5, 0.5)))


def distill(config: dict[str, Any], model: Any, context: PassContext) -> Any:
    return create_pass(parse_pass_config(config)).apply(model, context)


def _trained_teacher(trainer_for: Any, path: Path) -> Any:
    """The 32-unit MLP trained on the task for 3 epochs: a teacher that knows the classes."""
    import onnx

    trainer = trainer_for()
    converted = trainer.to_torch(onnx.load(str(path)))
    trainer.fit(converted.module, "teacher")
    return trainer.to_onnx(converted)


def _npz(path: Path, count: int, seed: int, shuffle_labels: bool = False) -> Path:
    images, labels = make_images(count, seed)
    if shuffle_labels:
        labels = np.random.default_rng(seed).permutation(labels)
    np.savez(path, images=images, labels=labels)
    return path


def _top1(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = (images.astype(np.float32) / 255.0)[:, None]
    predicted = [int(np.argmax(session.run(None, {"image": row[None]})[0])) for row in inputs]
    return float(np.mean(np.asarray(predicted) == labels))


def test_distill_trains_a_smaller_student_from_soft_targets_alone(
    trainer_for: Any, mlp_path: Path, tmp_path: Path
) -> None:
    """The student's labels are shuffled (useless) and α = 1: all it can learn comes from the teacher,
    so its top-1 on true labels shows that the soft targets carry the teacher's knowledge."""
    import onnx

    teacher = _trained_teacher(trainer_for, mlp_path)
    student_path = build_mlp(tmp_path / "student.onnx", seed=5, hidden=6)
    noisy = _npz(tmp_path / "noisy.npz", 512, seed=3, shuffle_labels=True)
    trainer = trainer_for(data={"kind": "npz", "path": str(noisy)}, epochs=6, patience=None)
    config = {"kind": "distill", "student": str(student_path), "alpha": 1.0, "temperature": 2.0}
    result = create_pass(parse_pass_config(config)).apply(
        teacher, PassContext([], tmp_path, training=trainer)
    )

    images, labels = make_images(256, seed=11)
    assert _top1(teacher, images, labels) > 0.9
    assert _top1(result.model, images, labels) > 0.8  # chance is 0.25; the labels it saw were noise
    student = onnx.load(str(student_path))
    assert [i.name for i in result.model.graph.initializer] == [i.name for i in student.graph.initializer]
    assert result.changes["student_macs"] < result.changes["teacher_macs"] / 4
    assert result.changes["training"]["epochs_run"] == 6


def test_an_architecture_student_exports_under_the_teachers_names(tmp_path: Path) -> None:
    """A fashion_cnn at 1/8 width trained from scratch on a few bundled samples for one epoch: the
    export takes the bundled model's input, gives its logits and keeps its metadata."""
    import onnx

    from edgecam.compiler.training.config import TrainingConfig
    from edgecam.compiler.training.trainer import Trainer
    from edgecam.models.fashion_cnn import onnx_path
    from edgecam.models.fashion_cnn.train import PREPROCESSING

    teacher = onnx.load(str(onnx_path()))
    samples = {"kind": "npz", "path": str(onnx_path().parent / "samples.npz"), "limit": 64}
    settings = {"data": samples, "epochs": 1, "batch_size": 32, "checkpoint_dir": str(tmp_path / "ckpt")}
    trainer = Trainer(TrainingConfig.model_validate(settings), PREPROCESSING, "image")
    config = {"kind": "distill", "architecture": "fashion_cnn", "width": 0.125}
    result = create_pass(parse_pass_config(config)).apply(
        teacher, PassContext([], tmp_path, training=trainer)
    )

    model = result.model
    assert [v.name for v in model.graph.input] == ["image"] and model.graph.output[0].name == "logits"
    assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in teacher.metadata_props}
    assert result.changes["student_macs"] < result.changes["teacher_macs"] / 30


def test_a_teacher_with_other_classes_is_refused_by_name(
    trainer_for: Any, mlp_path: Path, tmp_path: Path
) -> None:
    import onnx
    import torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 5))
    path = tmp_path / "five.onnx"
    torch.onnx.export(
        net, (torch.zeros(1, 1, SIZE, SIZE),), str(path), input_names=["image"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    config = {"kind": "distill", "student": str(mlp_path), "teacher": str(path)}
    context = PassContext([], tmp_path, training=trainer_for())
    with pytest.raises(RecipeError, match=r"the teacher has outputs \[\[1, 5\]\], the student \[\[1, 4\]\]"):
        create_pass(parse_pass_config(config)).apply(onnx.load(str(mlp_path)), context)
    # In a recipe's `distillation:` section: refused before anything trains, naming the field.
    from edgecam.compiler.compress import measure_recipe

    data = {"kind": "npz", "path": str(_npz(tmp_path / "d.npz", 64, seed=2))}
    with pytest.raises(RecipeError, match=r"pass 0 \(distill\): .*exactly one of `student`"):
        parse_recipe({"evaluation": data, "training": {"data": data}, "passes": [{"kind": "distill"}]})
    recipe = parse_recipe(
        {
            "evaluation": data,
            "training": {"data": data, "checkpoint_dir": str(tmp_path / "ckpt")},
            "distillation": {"teacher": str(path)},
            "passes": [{"kind": "finetune"}],
        }
    )
    with pytest.raises(RecipeError, match=r"distillation.teacher five.onnx has outputs \[\[1, 5\]\]"):
        measure_recipe(mlp_path, recipe, tmp_path)
    with pytest.raises(RecipeError, match="distillation: a teacher trains the student: add a `training:`"):
        parse_recipe({"evaluation": data, "distillation": {}})


def test_a_recipe_teacher_makes_every_finetune_distil(mlp_path: Path, tmp_path: Path) -> None:
    """The recipe's trainer carries the distillation loss; without `distillation:` plain cross-entropy."""
    from edgecam.compiler.compress import _trainer
    from edgecam.compiler.frontends.onnx import load_onnx
    from edgecam.compiler.training.distill import DistillationLoss
    from edgecam.compiler.training.loop import cross_entropy

    data = {"kind": "npz", "path": str(_npz(tmp_path / "d.npz", 64, seed=2))}
    base = {"evaluation": data, "training": {"data": data}, "passes": [{"kind": "finetune"}]}
    source = load_onnx(mlp_path)
    with_teacher = _trainer(parse_recipe({**base, "distillation": {"temperature": 3}}), tmp_path, source)
    assert with_teacher is not None and isinstance(with_teacher.loss, DistillationLoss)
    assert with_teacher.loss.temperature == 3 and with_teacher.loss.alpha == 0.9
    assert "T=3" in with_teacher.loss_name  # another setting never resumes this one's checkpoint
    plain = _trainer(parse_recipe(base), tmp_path, source)
    assert plain is not None and plain.loss is cross_entropy
