"""The training seam every training pass uses (issue 19): ONNX in, torch training, ONNX out.

- `config.TrainingConfig` — the recipe's `training:` section (labelled data, epochs, lr, patience).
- `convert.to_torch` / `convert.to_onnx` — onnx2torch in; `torch.onnx.export` out, checked against
  the torch model under ONNX Runtime, names and edgecam.* metadata kept.
- `loop.fit` — seeded, deterministic loop with a pluggable loss, progress lines, early stop,
  atomic per-epoch checkpoints and resume.
- `trainer.Trainer` — the above bound to one recipe run; passes get it as `PassContext.training`.

torch is imported inside functions only: recipes are parsed where the train extra is not installed.
"""
