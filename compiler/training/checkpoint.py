"""Training checkpoints: written atomically every epoch, refused by name when they cannot be read.

A checkpoint is one torch.save file. It is written to a temporary file in the same directory,
flushed to disk and renamed over the previous one, so an interrupt (Ctrl-C, a killed process, a
full disk) leaves the last good checkpoint in place, never a half-written one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from edgecam.compiler.errors import TrainingError

FORMAT = "edgecam-training/1"
_KEYS = {
    "format",
    "epoch",
    "finished",
    "module",
    "optimizer",
    "torch_rng",
    "best",
    "best_module",
    "stale",
    "history",
}


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (the keys `load` checks) to `path` atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    """The state saved in `path`; TrainingError naming the file when it is not a complete checkpoint."""
    import torch

    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects from a file is never needed.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(
            f"checkpoint {path} is corrupt or not a training checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); delete it to train from the start"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not set(state) >= _KEYS:
        missing = sorted(_KEYS - set(state)) if isinstance(state, dict) else sorted(_KEYS)
        raise TrainingError(
            f"checkpoint {path} is not an {FORMAT} checkpoint (missing {missing}); delete it to train "
            "from the start"
        )
    return state
