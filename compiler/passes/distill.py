"""`kind: distill` — train a smaller student on a teacher's soft targets (Hinton et al. 2015).

The teacher is the pass's input model (what the recipe has made so far) or a named ONNX file; the
student is a smaller ONNX model (its weights are the starting point) or an architecture from
`edgecam.models.architectures` trained from scratch. The student trains with the recipe's `training:`
data and budget and the distillation loss (compiler/training/distill.py), and the pass returns the
student's ONNX export (checked under ONNX Runtime), which replaces the model for the passes after it.
A teacher whose input or logits do not match the student's is refused by name before any training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from edgecam.compiler.errors import PassError, RecipeError
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass


class DistillConfig(PassConfig):
    kind: Literal["distill"] = "distill"
    trains: ClassVar[bool] = True
    # The student: an ONNX file (relative to the recipe's folder), or an architecture by name with a
    # width multiplier (edgecam.models.architectures). Exactly one of the two.
    student: Path | None = None
    architecture: str | None = None
    width: float = Field(default=1.0, gt=0.0, le=4.0)
    # The teacher's ONNX file; None: the pass's input model.
    teacher: Path | None = None
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)  # soft-target weight; 1 - alpha: the labels
    # This pass's epochs and learning rate; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if (self.student is None) == (self.architecture is None):
            raise ValueError("give the student as exactly one of `student` (an ONNX file) or `architecture`")
        return self


@register_pass
class DistillPass(CompressionPass[DistillConfig]):
    config_type = DistillConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        from edgecam.compiler.evaluate import count_macs
        from edgecam.compiler.training.distill import check_teacher, distillation_loss

        config = self.config
        trainer = context.require_training(config.kind)
        teacher = self._load("teacher", config.teacher, trainer.base_dir) if config.teacher else model
        converted = self._student(teacher, trainer.base_dir, trainer.seed)
        check_teacher(teacher, converted.source, "distill: the teacher")
        loss = distillation_loss(teacher, config.temperature, config.alpha)
        student_trainer = dataclasses.replace(trainer, loss=loss)
        result = student_trainer.fit(converted.module, "distill", epochs=config.epochs, lr=config.lr)
        exported = student_trainer.to_onnx(converted)
        changes = {
            "student": str(config.student) if config.student else f"{config.architecture} ×{config.width:g}",
            "teacher": str(config.teacher) if config.teacher else "the input model",
            "teacher_macs": count_macs(teacher),
            "student_macs": count_macs(exported),
            "temperature": config.temperature,
            "alpha": config.alpha,
            "training": result.summary(),
        }
        return PassResult(exported, changes=changes)

    def _student(self, teacher: Any, base_dir: Path, seed: int) -> Any:
        """The student as a TorchModel: the ONNX file converted, or the architecture built fresh and
        exported under the teacher's input/output names and metadata."""
        from edgecam.compiler.training.convert import TorchModel, to_torch

        if self.config.student is not None:
            return to_torch(self._load("student", self.config.student, base_dir))
        import torch

        from edgecam.models import architectures

        assert self.config.architecture is not None  # _one_student
        torch.manual_seed(seed)  # the fresh student's initial weights follow the recipe's seed
        try:
            module = architectures.build(self.config.architecture, self.config.width)
        except ValueError as exc:
            raise PassError(f"distill: `architecture`: {exc}") from None
        return TorchModel(module, _shaped_like(teacher, module), {})

    @staticmethod
    def _load(field: str, path: Path, base_dir: Path) -> Any:
        import onnx

        resolved = path if path.is_absolute() else Path(base_dir) / path
        if not resolved.is_file():
            raise RecipeError(f"distill: `{field}` {resolved} does not exist")
        try:
            return onnx.load(str(resolved))
        except Exception as exc:  # onnx raises DecodeError and others on a file that is not a model
            raise RecipeError(f"distill: `{field}` {resolved} is not a readable ONNX model: {exc}") from exc


def _shaped_like(teacher: Any, module: Any) -> Any:
    """A stand-in source model for an architecture student: the teacher's graph inputs and metadata,
    with the output shape the untrained module gives on the teacher's input (so the teacher check
    compares what the student really computes)."""
    import onnx
    import torch

    initializers = {init.name for init in teacher.graph.initializer}
    inputs = [value for value in teacher.graph.input if value.name not in initializers]
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    with torch.no_grad():
        out = module.eval()(torch.zeros(shape))
    output = onnx.helper.make_tensor_value_info(teacher.graph.output[0].name, 1, list(out.shape))
    graph = onnx.helper.make_graph([], "student", inputs, [output])
    source = onnx.helper.make_model(graph, opset_imports=list(teacher.opset_import))
    source.metadata_props.extend(teacher.metadata_props)
    return source
