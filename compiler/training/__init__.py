"""The training seam every training pass uses (issue 19): ONNX in, torch training, ONNX out.

- `config.TrainingConfig` — the recipe's `training:` section (labelled data, epochs, lr, patience).
- `convert.to_torch` / `convert.to_onnx` — onnx2torch in; `torch.onnx.export` out, checked against
  the torch model under ONNX Runtime, names and edgecam.* metadata kept.
- `loop.fit` — seeded, deterministic loop with a pluggable loss, progress lines, early stop,
  atomic per-epoch checkpoints and resume.
- `trainer.Trainer` — the above bound to one recipe run; passes get it as `PassContext.training`.

torch is imported inside functions only: recipes are parsed where the train extra is not installed.
"""

from importlib.util import find_spec

# What a recipe that trains needs beyond the compiler extra (pyproject.toml's `train` extra).
_TRAIN_MODULES = ("torch", "onnx2torch", "torch_pruning")


def require_train_extra(what: str) -> None:
    """TrainingError naming `what` and the install command when the train extra is missing: a bare
    ModuleNotFoundError from deep inside a pass says neither."""
    from edgecam.compiler.errors import TrainingError

    missing = [name for name in _TRAIN_MODULES if find_spec(name) is None]
    if missing:
        raise TrainingError(
            f"{what} trains, which needs {', '.join(missing)}: install the train extra "
            "(pip install 'edgecam[train]'; torch is pinned to its CPU build)"
        )
