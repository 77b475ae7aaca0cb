"""The training loop every training pass runs: seeded, deterministic, checkpointed, resumable.

`fit` trains a torch module in place. The loss is a parameter (`Loss`): plain cross-entropy by
default, a distillation loss when a recipe names a teacher. Hooks let a pass hold a constraint
during training (`torch.nn.utils.prune` masks, shared centroids) without its own loop.

Determinism: the batch order of epoch e is a permutation drawn from a generator seeded with
(seed, e), torch's global RNG (dropout) is saved in the checkpoint, and torch runs with
deterministic algorithms, so an interrupted run that resumes ends with the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecam.compiler.training import checkpoint
from edgecam.compiler.training.config import TrainingConfig
from edgecam.compiler.training.data import LabelledData

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

# (logits, labels, inputs) → scalar loss. `inputs` lets a distillation loss run its teacher.
Loss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
_EVAL_BATCH = 1024
_PROGRESS_EVERY_S = 1.0


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy against the hard labels."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels)


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    loss: float
    accuracy: float  # on the training batches, in train mode
    validation: float | None  # top-1 on the validation set, when there is one
    seconds: float


@dataclass
class FitResult:
    """What `fit` did: per-epoch numbers, the epoch whose weights were kept, and whether it resumed."""

    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    resumed_from: int = 0
    stopped_early: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "resumed_from_epoch": self.resumed_from,
            "stopped_early": self.stopped_early,
            "final_loss": round(self.history[-1].loss, 6) if self.history else None,
            "validation_top1": self.history[self.best_epoch - 1].validation
            if self.history and self.best_epoch
            else None,
        }


def fit(
    module: torch.nn.Module,
    train: LabelledData,
    config: TrainingConfig,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    validation: LabelledData | None = None,
    loss: Loss = cross_entropy,
    after_step: Callable[[], None] | None = None,
    checkpoint_path: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda line: None,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> FitResult:
    """Train `module` in place for `epochs` (default `config.epochs`) and leave it in eval mode with
    the best epoch's weights (by validation top-1, else by training loss).

    With `checkpoint_path`, the state after every epoch is saved there atomically and a run that finds
    a checkpoint continues after its last epoch (a finished one returns at once). `after_step` runs
    after every optimizer step (e.g. to re-apply a constraint). `progress` gets a line with epoch,
    loss, accuracy and ETA about once a second; `on_epoch` gets each finished epoch's numbers.
    """
    import torch

    total = epochs if epochs is not None else config.epochs
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(parameters, config, lr if lr is not None else config.lr)
    result = FitResult()
    best = -math.inf
    best_state: dict[str, Any] | None = None
    stale = 0
    start_epoch = 0
    torch.manual_seed(seed)
    if checkpoint_path is not None and checkpoint_path.exists():
        state = checkpoint.load(checkpoint_path)
        _load_module(module, state["module"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        best, best_state, stale = state["best"], state["best_module"], state["stale"]
        result.history = [EpochStats(**entry) for entry in state["history"]]
        result.best_epoch = int(state.get("best_epoch", 0))
        start_epoch = result.resumed_from = int(state["epoch"])
        if state["finished"]:
            if best_state is not None:
                _load_module(module, best_state, checkpoint_path)
            result.stopped_early = bool(state.get("stopped_early", False))
            return result
    with _deterministic():
        for epoch in range(start_epoch, total):
            stats = _epoch(module, train, config, optimizer, loss, after_step, seed, epoch, total, progress)
            if validation is not None:
                stats.validation = accuracy(module, validation)
            on_epoch(stats)
            result.history.append(stats)
            score = stats.validation if stats.validation is not None else -stats.loss
            if score > best:
                best, stale, result.best_epoch = score, 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
            result.stopped_early = config.patience is not None and stale >= config.patience
            finished = result.stopped_early or epoch + 1 == total
            if checkpoint_path is not None:
                checkpoint.save(
                    checkpoint_path,
                    {
                        "epoch": epoch + 1,
                        "finished": finished,
                        "stopped_early": result.stopped_early,
                        "module": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "best": best,
                        "best_epoch": result.best_epoch,
                        "best_module": best_state,
                        "stale": stale,
                        "history": [vars(entry) for entry in result.history],
                    },
                )
            if result.stopped_early:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return result


def accuracy(module: torch.nn.Module, data: LabelledData) -> float:
    """Top-1 (0-1) of `module` in eval mode on `data`."""
    import torch

    module.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, len(data), _EVAL_BATCH):
            logits = module(data.inputs[start : start + _EVAL_BATCH])
            hits += int((logits.argmax(1) == data.labels[start : start + _EVAL_BATCH]).sum())
    return hits / max(len(data), 1)


def _epoch(
    module: torch.nn.Module,
    data: LabelledData,
    config: TrainingConfig,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    after_step: Callable[[], None] | None,
    seed: int,
    epoch: int,
    epochs: int,
    progress: Callable[[str], None],
) -> EpochStats:
    import torch

    module.train()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    flips = torch.rand(len(data), generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 1))
    started = last = time.monotonic()
    seen = hits = 0
    total_loss = 0.0
    batches = math.ceil(len(data) / config.batch_size)
    for batch, begin in enumerate(range(0, len(data), config.batch_size), start=1):
        index = order[begin : begin + config.batch_size]
        inputs, labels = data.inputs[index], data.labels[index]
        if config.hflip:
            inputs = torch.where((flips[index] < 0.5)[:, None, None, None], inputs.flip(-1), inputs)
        optimizer.zero_grad(set_to_none=True)
        logits = module(inputs)
        value = loss_fn(logits, labels, inputs)
        value.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        seen += len(index)
        hits += int((logits.detach().argmax(1) == labels).sum())
        total_loss += float(value.detach()) * len(index)
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY_S or batch == batches:
            last = now
            per_batch = (now - started) / batch
            eta = per_batch * (batches - batch + (epochs - epoch - 1) * batches)
            progress(
                f"epoch {epoch + 1}/{epochs} batch {batch}/{batches} loss {total_loss / seen:.4f} "
                f"acc {hits / seen * 100:.2f}% ETA {_duration(eta)}"
            )
    return EpochStats(
        epoch + 1, epochs, total_loss / max(seen, 1), hits / max(seen, 1), None, time.monotonic() - started
    )


def _optimizer(parameters: list[Any], config: TrainingConfig, lr: float) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=config.weight_decay)


def _load_module(module: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    from edgecam.compiler.errors import TrainingError

    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(
            f"checkpoint {path} holds another model's weights ({str(exc).splitlines()[0]}); delete it "
            "to train from the start"
        ) from None


@contextmanager
def _deterministic() -> Iterator[None]:
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
