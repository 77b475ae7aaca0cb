"""A compression recipe: which model, which passes in order, what data, how much accuracy may go.

YAML or JSON. Example (the bundled CNN, see models/fashion_cnn/recipes/):

    target: x86_64
    max_accuracy_drop: 1.0          # percentage points of top-1 (of agreement when unlabelled)
    evaluation: {kind: fashion_mnist, split: test, limit: 2000}
    calibration: {kind: fashion_mnist, split: train, limit: 256}
    passes:
      - {kind: prune, sparsity: 0.8}
      - {kind: weight_sharing, bits: 5}

Passes that train (`finetune`, `iterative_prune`, `trained_sharing`, `structured_prune`) need a
`training:` section with labelled data (compiler/training/config.py), e.g. Deep Compression:

    training: {data: {kind: fashion_mnist, split: train, limit: 55000}, epochs: 2, lr: 0.0005}
    passes:
      - {kind: iterative_prune, sparsity: 0.9, steps: 3}
      - {kind: trained_sharing, bits: 4}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecam.compiler.datasets import DatasetConfig
from edgecam.compiler.errors import RecipeError
from edgecam.compiler.passes import PassConfig, parse_pass_config
from edgecam.compiler.training.config import TrainingConfig
from edgecam.compiler.training.distill import DistillationConfig


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The model to compress; `edgecam compress MODEL` overrides it. Relative to the recipe file.
    model: Path | None = None
    target: str = "x86_64"
    target_options: dict[str, Any] = Field(default_factory=dict)
    passes: list[SerializeAsAny[PassConfig]] = Field(default_factory=list)
    # Largest top-1 loss accepted, in percentage points; measured on `evaluation`. Without labels
    # the gate applies to disagreement with the original model instead.
    max_accuracy_drop: float = Field(default=1.0, ge=0.0, le=100.0)
    evaluation: DatasetConfig
    calibration: DatasetConfig | None = None
    # Labelled data and budget for the passes that train (compiler/training/config.py).
    training: TrainingConfig | None = None
    # A teacher: every fine-tune of the recipe trains with the distillation loss (training/distill.py).
    distillation: DistillationConfig | None = None
    seed: int = 0

    @field_validator("passes", mode="before")
    @classmethod
    def _parse_passes(cls, value: Any) -> list[PassConfig]:
        if not isinstance(value, list):
            raise ValueError(f"passes must be a list of pass configs, got {type(value).__name__}")
        parsed = []
        for index, item in enumerate(value):
            try:
                parsed.append(parse_pass_config(item))
            except ValidationError as exc:
                raise ValueError(f"pass {index} ({item.get('kind')}): {_describe(exc)}") from None
            except RecipeError as exc:
                raise ValueError(f"pass {index}: {exc}") from None
        return parsed

    @model_validator(mode="after")
    def _training_present(self) -> Recipe:
        if self.distillation is not None and self.training is None:
            raise ValueError(
                "distillation: a teacher trains the student: add a `training:` section with a labelled "
                "`data` set (e.g. {kind: fashion_mnist, split: train})"
            )
        for index, config in enumerate(self.passes):
            if config.trains and self.training is None:
                raise ValueError(
                    f"pass {index} ({config.kind}) trains: add a `training:` section with a labelled "
                    "`data` set (e.g. {kind: fashion_mnist, split: train})"
                )
        return self


def load_recipe(path: Path) -> tuple[Recipe, Path]:
    """Read and validate a recipe file; returns it and the directory its relative paths start from."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RecipeError(
            f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    return parse_recipe(data, source=str(path)), path.resolve().parent


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source} must be a mapping with `evaluation` and `passes`, got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source} is invalid: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as `field: reason (got value)`, one per line, without URLs."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        got = "" if error["type"] in {"missing", "value_error"} else f" (got {error.get('input')!r})"
        lines.append(f"{where}: {message}{got}")
    return "; ".join(lines)
