"""`kind: qat` — quantization-aware training: int8 fake quantization while fine-tuning, QDQ ONNX out.

Post-training int8 (`kind: int8`) rounds weights that were trained in float; here the rounding is in
the forward pass during a fine-tune with the recipe's `training:` data, budget and loss (a teacher's
when the recipe names one), so the weights learn around it (torch.ao FakeQuantize, straight-through
estimator; compiler/training/fake_quant.py). The result is the QDQ form the int8 pass writes: per-
channel int8 weights (7-bit by default, which AVX2 computes with vpmaddubsw), uint8 activations per
tensor, float biases; the x86 build computes its convolutions and dense layers in integers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgecam.compiler.passes.backends.onnx import matches_any
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass


class QatConfig(PassConfig):
    kind: Literal["qat"] = "qat"
    trains: ClassVar[bool] = True
    # 7: weights in [-64, 63] (the int8 pass's reduce_range, AVX2's fast int8 dot); 8: [-128, 127].
    weight_bits: Literal[7, 8] = 7
    # fnmatch patterns on Conv/Gemm node names left in float (a sensitive layer).
    exclude: tuple[str, ...] = ()
    # Training inputs run through the model before training to start the activation ranges.
    observe: int = Field(default=256, ge=1, le=100_000)
    # This fine-tune's epochs and learning rate; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)


@register_pass
class QatPass(CompressionPass[QatConfig]):
    config_type = QatConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        from edgecam.compiler.errors import PassError
        from edgecam.compiler.training import fake_quant

        config = self.config
        trainer = context.require_training(config.kind)
        layers = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
        for pattern in config.exclude:
            if not any(matches_any(name, [pattern]) for name in layers):
                raise PassError(
                    f"qat: `exclude` pattern {pattern!r} matches no Conv/Gemm node; nodes: {layers}"
                )
        skip = {name for name in layers if matches_any(name, config.exclude)}
        converted = trainer.to_torch(model)
        quantized = fake_quant.attach(converted, config.weight_bits, skip)
        inputs = trainer.train_data().inputs
        fake_quant.observe(quantized, inputs[: config.observe])
        result = trainer.fit(
            converted.module, f"qat-{config.weight_bits}bit", epochs=config.epochs, lr=config.lr
        )
        check = inputs[:8].numpy()
        with_fake_quant = _outputs(converted.module, check)  # before export removes the fake quantization
        exported, per_layer = fake_quant.export(quantized, check)
        changes = {
            "weight_bits": config.weight_bits,
            "layers": per_layer,
            "float_layers": sorted(skip),
            "training": result.summary(),
            # How far ONNX Runtime on the QDQ export is from the fake-quantized torch model it came from,
            # relative to the logits' scale (rounding ties and float summation order only).
            "export_difference": _relative(_ort(exported, check), with_fake_quant),
        }
        return PassResult(exported, changes=changes)


def _outputs(module: Any, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(module.eval()(torch.from_numpy(inputs)).numpy())


def _ort(model: Any, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    session = ort.InferenceSession(
        model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in inputs])


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
