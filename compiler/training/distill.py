"""Knowledge distillation (Hinton, Vinyals and Dean 2015): a student learns the teacher's softened outputs.

    loss = α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · CE(s, labels)

s and t are the student's and the teacher's logits. The soft targets at temperature T > 1 carry how
the teacher ranks the wrong classes too ("dark knowledge"); their gradients scale as 1/T², so the
term is multiplied by T² to keep its weight against the hard-label term when T changes (section 2 of
the paper). The recipe's `distillation:` section names the teacher; then every fine-tune of the
recipe (`finetune`, and the passes that retrain) trains with this loss instead of plain cross-entropy,
and the `distill` pass trains a smaller student with it.

No torch import at module level: recipes are parsed where the train extra is not installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from edgecam.compiler.errors import RecipeError, TrainingError

if TYPE_CHECKING:
    import onnx
    import torch


class DistillationConfig(BaseModel):
    """The recipe's `distillation:` section: who teaches, at which temperature, with which weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The teacher's ONNX file (relative to the recipe's folder); None: the model the recipe compresses.
    teacher: Path | None = None
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    # Weight of the soft-target term; 1 - alpha goes to the hard labels.
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """α·T²·KL(teacher's soft targets ‖ student's) + (1−α)·cross-entropy, averaged over the batch."""
    import torch.nn.functional as F

    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * F.cross_entropy(student, labels)


class DistillationLoss:
    """A training Loss (logits, labels, inputs) that runs the frozen teacher on the same inputs."""

    def __init__(self, teacher: torch.nn.Module, temperature: float, alpha: float, name: str) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        # Trainer.checkpoint_path keys checkpoints by the loss's __qualname__: another teacher or
        # setting must not resume this one's checkpoint.
        self.__qualname__ = f"DistillationLoss({name}, T={temperature:g}, alpha={alpha:g})"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            teacher = self.teacher(inputs)
        if teacher.shape != logits.shape:
            raise TrainingError(
                f"the teacher's outputs have shape {list(teacher.shape)}, the student's "
                f"{list(logits.shape)}; distillation needs a teacher with the student's classes"
            )
        return kd_loss(logits, teacher, labels, self.temperature, self.alpha)


def teacher_model(config: DistillationConfig, base_dir: Path, student_source: onnx.ModelProto) -> Any:
    """The teacher's ONNX model (the named file, else the recipe's own model `student_source`),
    checked against the student: RecipeError naming `distillation.teacher` when they do not match."""
    import onnx

    if config.teacher is None:
        return student_source
    path = config.teacher if config.teacher.is_absolute() else Path(base_dir) / config.teacher
    if not path.is_file():
        raise RecipeError(f"distillation.teacher {path} does not exist")
    try:
        teacher = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others on a file that is not a model
        raise RecipeError(f"distillation.teacher {path} is not a readable ONNX model: {exc}") from exc
    check_teacher(teacher, student_source, f"distillation.teacher {path.name}")
    return teacher


def check_teacher(teacher: onnx.ModelProto, student: onnx.ModelProto, what: str) -> None:
    """RecipeError naming `what` unless the teacher takes the student's input and gives its output shape."""
    got, want = _signature(teacher), _signature(student)
    if got[0] != want[0]:
        raise RecipeError(
            f"{what} takes inputs {got[0]}, the student {want[0]}; a teacher sees the same input"
        )
    if got[1][:1] != want[1][:1]:
        raise RecipeError(
            f"{what} has outputs {got[1]}, the student {want[1]}; its first output (the logits) must "
            "have the student's shape (the same classes)"
        )


def _signature(model: onnx.ModelProto) -> tuple[list[list[int]], list[list[int]]]:
    """Shapes of the graph inputs (without initializers) and outputs; an unknown dimension is 0."""
    initializers = {init.name for init in model.graph.initializer}

    def shape(value: Any) -> list[int]:
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = [shape(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [shape(v) for v in model.graph.output]


def distillation_loss(teacher: onnx.ModelProto, temperature: float, alpha: float) -> DistillationLoss:
    """The loss with `teacher` converted to torch (onnx2torch, through the training seam)."""
    from edgecam.compiler.training.convert import to_torch

    digest = hashlib.sha256(teacher.SerializeToString()).hexdigest()[:12]
    return DistillationLoss(to_torch(teacher).module, temperature, alpha, f"teacher {digest}")
