"""The pass contract: a typed config (the registry key), a context, and what a pass returns.

A compression technique is one module in this package that defines a `<Technique>Config` with
`kind: Literal["<technique>"]` and a `CompressionPass` subclass decorated with `@register_pass`.
Nothing else changes: the recipe loader discovers every module here (see `__init__.py`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import onnx

    from edgecam.compiler.training.trainer import Trainer

Feeds = dict[str, np.ndarray]


class PassConfig(BaseModel):
    """Base of every pass config. Subclasses narrow `kind` to a Literal: that string is the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    # True for a pass that trains: the recipe must then have a `training:` section (labelled data).
    trains: ClassVar[bool] = False


@dataclass
class PassContext:
    """What a pass may use besides the model. Built once per recipe run by compiler/compress.py.

    `calibration` holds preprocessed model inputs made from real frames (never random data);
    `evaluate` returns top-1 (0-1) of a candidate model on the evaluation set, for passes that
    search (e.g. a sensitivity scan), or None when the evaluation set has no labels;
    `training` is the seam a training pass uses (compiler/training: the recipe's labelled data,
    budget and loss); None when the recipe has no `training:` section;
    `progress` shows a line of a long pass's progress to the user (the CLI's progress bar).
    """

    calibration: Sequence[Feeds]
    work_dir: Path
    evaluate: Callable[[onnx.ModelProto], float | None] | None = None
    training: Trainer | None = None
    seed: int = 0
    progress: Callable[[str], None] = lambda message: None

    def require_calibration(self, kind: str, minimum: int = 1) -> Sequence[Feeds]:
        from edgecam.compiler.errors import RecipeError

        if len(self.calibration) < minimum:
            raise RecipeError(
                f"pass {kind!r} needs a calibration set of at least {minimum} inputs, got "
                f"{len(self.calibration)}; add `calibration:` to the recipe"
            )
        return self.calibration

    def require_training(self, kind: str) -> Trainer:
        from edgecam.compiler.errors import RecipeError

        if self.training is None:
            raise RecipeError(
                f"pass {kind!r} trains and needs the recipe's `training:` section with a labelled data set"
            )
        from edgecam.compiler.training import require_train_extra

        require_train_extra(f"pass {kind!r}")
        return self.training


@dataclass
class WeightCoding:
    """Initializers a pass stores in a coded form in the artifact instead of as raw tensors.

    `encoded` maps an initializer name to the bytes the artifact keeps for it; `decode` turns those
    bytes back into the exact array the model was evaluated with (the runtime does this at load).
    """

    codec: str
    encoded: dict[str, bytes]
    decode: Callable[[bytes], np.ndarray]

    @property
    def coded_bytes(self) -> int:
        return sum(len(blob) for blob in self.encoded.values())


@dataclass
class PassResult:
    """The compressed model and a JSON-able summary of what changed (per layer where it applies)."""

    model: onnx.ModelProto
    changes: dict[str, Any] = field(default_factory=dict)
    coding: WeightCoding | None = None


C = TypeVar("C", bound=PassConfig)


class CompressionPass(abc.ABC, Generic[C]):
    """One technique. `apply` never mutates its input model: it returns a new one."""

    config_type: ClassVar[type[PassConfig]]

    def __init__(self, config: C) -> None:
        self.config = config

    @abc.abstractmethod
    def apply(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        """Compress `model`; raise PassError naming the layer and the reason when it cannot apply."""


_REGISTRY: dict[str, type[CompressionPass[Any]]] = {}

P = TypeVar("P", bound=type[CompressionPass[Any]])


def register_pass(cls: P) -> P:
    """Class decorator: make `cls` available under its config's `kind`."""
    field_info = cls.config_type.model_fields["kind"]
    kinds: tuple[Any, ...] = getattr(field_info.annotation, "__args__", ())
    if len(kinds) != 1 or not isinstance(kinds[0], str):
        raise TypeError(f"{cls.config_type.__name__}.kind must be a Literal of one string")
    kind = kinds[0]
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise TypeError(
            f"pass kind {kind!r} is registered twice ({_REGISTRY[kind].__name__}, {cls.__name__})"
        )
    _REGISTRY[kind] = cls
    return cls


def registered() -> dict[str, type[CompressionPass[Any]]]:
    return dict(_REGISTRY)
