"""`kind: structured_prune` — remove whole channels on torch-pruning's dependency graph (Fang et al.,
"DepGraph", 2023), fine-tuning after each step; the output ONNX is physically smaller.

The dependency graph removes a conv's output channels together with everything that depends on them
(the next layer's input channels, the bias, a residual partner), so the graph stays valid. Criteria:
`l1` (filter L1 norm, Li et al. 2017), `taylor` (first-order Taylor |g·w| of the loss, Molchanov et
al. 2019, gradients from the recipe's training data and loss), `thinet` (the next layer's
reconstruction error, greedy channel selection, Luo et al. 2017: compiler/training/thinet.py),
`slimming` (Network Slimming, Liu et al. 2017: per-channel scales trained with an L1 penalty, the
smallest removed: compiler/training/slimming.py) and `random` (the control any criterion must
beat). The layer that produces a graph output (the classifier) keeps its outputs: they are the
model's contract.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from edgecam.compiler.passes.backends.onnx import matches_any
from edgecam.compiler.passes.base import CompressionPass, PassConfig, PassContext, PassResult, register_pass
from edgecam.compiler.training.trainer import Trainer


class StructuredPruneConfig(PassConfig):
    kind: Literal["structured_prune"] = "structured_prune"
    trains: ClassVar[bool] = True
    criterion: Literal["l1", "taylor", "thinet", "slimming", "random"] = "l1"
    # Fraction of the channels of every prunable layer removed in the end (torch-pruning's ratio).
    ratio: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Prune-fine-tune rounds; the ratio grows linearly to `ratio`.
    steps: int = Field(default=1, ge=1, le=50)
    # Layers (ONNX node names, fnmatch) whose output channels stay.
    exclude: tuple[str, ...] = ()
    # Fine-tuning per round; default: the recipe's `training:` values.
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)
    # Taylor: training batches whose gradients rank the channels.
    taylor_batches: int = Field(default=8, ge=1)
    # ThiNet: training inputs whose activations the next layers are reconstructed on.
    thinet_samples: int = Field(default=64, ge=1)
    # Slimming: weight of the L1 penalty on the channel scales, and the epochs of that sparsity
    # training before the first pruning (default: the recipe's `training.epochs`).
    slimming_l1: float = Field(default=1e-4, gt=0.0)
    slimming_epochs: int | None = Field(default=None, ge=1)


@register_pass
class StructuredPrunePass(CompressionPass[StructuredPruneConfig]):
    config_type = StructuredPruneConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        import torch
        import torch_pruning as tp

        config = self.config
        trainer = context.require_training(config.kind)
        converted = trainer.to_torch(model)
        net = converted.module
        example = trainer.train_data().inputs[:1]
        outputs = {output.name for output in model.graph.output}
        producers = {node.name or node.output[0] for node in model.graph.node if set(node.output) & outputs}
        ignored = [
            net.get_submodule(module_name)
            for module_name, node_name in converted.node_of_module.items()
            if node_name in producers or matches_any(node_name, config.exclude)
        ]
        from edgecam.compiler.training.thinet import ThiNetImportance

        if config.criterion == "slimming":
            ignored_set = set(ignored)
            convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m not in ignored_set]
            gates = _slimming(convs, trainer, net, config)
        importance = {
            "l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "taylor": lambda: tp.importance.TaylorImportance(),
            "thinet": lambda: ThiNetImportance(context.seed),
            "slimming": lambda: gates.importance(),
            "random": lambda: tp.importance.RandomImportance(),
        }[config.criterion]()
        macs_before, params_before = tp.utils.count_ops_and_params(net, example)
        torch.manual_seed(context.seed)  # the random criterion's draw
        pruner = tp.pruner.MetaPruner(
            net, example, importance=importance, pruning_ratio=config.ratio,
            iterative_steps=config.steps, ignored_layers=ignored,
        )  # fmt: skip
        rounds = []
        for step in range(1, config.steps + 1):
            if config.criterion == "taylor":
                _accumulate_gradients(net, trainer, config.taylor_batches)
            elif isinstance(importance, ThiNetImportance):
                importance.capture(net, trainer.train_data().inputs[: config.thinet_samples])
            pruner.step()
            net.zero_grad(set_to_none=True)
            macs, params = tp.utils.count_ops_and_params(net, example)
            context.progress(f"round {step}/{config.steps}: {macs / macs_before:.2f} of the MACs")
            stage = f"{config.kind}-{config.criterion}-{config.ratio}-step{step}of{config.steps}"
            fit = trainer.fit(net, stage, epochs=config.epochs, lr=config.lr)
            rounds.append({"macs": int(macs), "params": int(params), "training": fit.summary()})
        exported = trainer.to_onnx(converted)
        channels = {
            converted.node_of_module[name]: int(module.weight.shape[0])
            for name, module in net.named_modules()
            if name in converted.node_of_module and isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
        }
        changes = {
            "criterion": config.criterion,
            "macs_before": int(macs_before),
            "macs_after": rounds[-1]["macs"],
            "macs_ratio": round(rounds[-1]["macs"] / macs_before, 6),
            "params_before": int(params_before),
            "params_after": rounds[-1]["params"],
            "output_channels": channels,
            "rounds": rounds,
        }
        return PassResult(exported, changes)


def _slimming(convs: list[Any], trainer: Trainer, net: Any, config: StructuredPruneConfig) -> Any:
    """Gate the convs, train with the L1 penalty on the gates (the recipe's loss plus it), fold."""
    from dataclasses import replace

    from edgecam.compiler.training.slimming import SlimmingGates

    gates = SlimmingGates(convs)
    sparse = replace(trainer, loss=gates.loss(trainer.loss, config.slimming_l1))
    stage = f"{config.kind}-slimming-{config.slimming_l1}"
    sparse.fit(net, stage, epochs=config.slimming_epochs, lr=config.lr)
    gates.fold()
    return gates


def _accumulate_gradients(net: Any, trainer: Trainer, batches: int) -> None:
    """Gradients of the recipe's loss summed over the first `batches` training batches (in .grad),
    which TaylorImportance multiplies with the weights."""
    data = trainer.train_data()
    size = trainer.config.batch_size
    net.eval()
    net.zero_grad(set_to_none=True)
    for start in range(0, min(len(data), batches * size), size):
        inputs, labels = data.inputs[start : start + size], data.labels[start : start + size]
        trainer.loss(net(inputs), labels, inputs).backward()
