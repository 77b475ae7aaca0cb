"""`kind: finetune` — retrain the model as it is with the recipe's `training:` data, budget and loss.

After a training-free pass (filter pruning, low rank) it recovers the accuracy the cut cost; with a
teacher in the recipe it trains with the distillation loss. The graph's structure is unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass


class FinetuneConfig(PassConfig):
    kind: Literal["finetune"] = "finetune"
    trains: ClassVar[bool] = True
    # Epochs and learning rate of this fine-tune; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)


@register_pass
class FinetunePass(CompressionPass[FinetuneConfig]):
    config_type = FinetuneConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        trainer = context.require_training(self.config.kind)
        converted = trainer.to_torch(model)
        result = trainer.fit(converted.module, "finetune", epochs=self.config.epochs, lr=self.config.lr)
        return PassResult(trainer.to_onnx(converted), changes={"training": result.summary()})
