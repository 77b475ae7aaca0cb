"""Train the bundled Fashion-MNIST CNN, export it to ONNX and measure it: the demo never retrains.

    pip install -e '.[train]' && apt-get install dataset-fashion-mnist
    python -m edgecam.models.fashion_cnn.train --out models/fashion_cnn

Seeded and single-process, so a rerun on the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecam.model import metadata_props
from edgecam.models.fashion_cnn import LABELS, MODEL_NAME, load_split
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing, preprocess

if TYPE_CHECKING:  # torch is only installed with the `train` extra
    import torch

# Fashion-MNIST pixel statistics after scaling to [0, 1].
PREPROCESSING = Preprocessing(height=28, width=28, color="GRAY", layout="NCHW", mean=[0.2860], std=[0.3530])
POSTPROCESSING = Postprocessing(apply_softmax=True, top_k=3)
SAMPLES = 1000


WIDTHS = (32, 32, 64, 64, 96)  # output channels of the five conv blocks


def build_net(widths: tuple[int, int, int, int, int] = WIDTHS) -> torch.nn.Module:
    """The bundled CNN; narrower `widths` give the students `distill` trains (models/architectures.py)."""
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    a, b, c, d, e = widths
    return nn.Sequential(
        *block(1, a),
        *block(a, b),
        nn.MaxPool2d(2),  # 14x14
        *block(b, c),
        *block(c, d),
        nn.MaxPool2d(2),  # 7x7
        *block(d, e),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(e, len(LABELS)),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    import torch

    x = images.astype(np.float32) * PREPROCESSING.scale
    x = (x - PREPROCESSING.mean[0]) / PREPROCESSING.std[0]
    return torch.from_numpy(x[:, None, :, :])


def train(epochs: int, seed: int, batch: int) -> torch.nn.Module:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels = load_split("train")
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    net = build_net()
    steps = epochs * ((len(images) + batch - 1) // batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(images)))
        start, seen, correct, total_loss = time.time(), 0, 0, 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x, y = x_all[idx], y_all[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)  # mirrored clothes are still clothes
            optimizer.zero_grad()
            out = net(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(idx)
            correct += int((out.argmax(1) == y).sum())
            total_loss += loss.item() * len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total_loss / seen:.4f} train acc {correct / seen:.4f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
    return net.eval()


def export(net: torch.nn.Module, path: Path) -> None:
    import onnx
    import torch

    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        net,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
    )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata_props(MODEL_NAME, PREPROCESSING, POSTPROCESSING, LABELS))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def evaluate(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 through ONNX Runtime and the server's own preprocessing: the number a camera would see."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = sum(
        int(session.run(None, {"image": preprocess(image, PREPROCESSING)})[0].argmax() == label)
        for image, label in zip(images, labels, strict=True)
    )
    return hits / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    import onnx
    import onnxruntime
    import torch

    started = time.time()
    net = train(args.epochs, args.seed, args.batch)
    onnx_file = args.out / "fashion_cnn.onnx"
    export(net, onnx_file)
    test_images, test_labels = load_split("t10k")
    top1 = evaluate(onnx_file, test_images, test_labels)
    np.savez_compressed(args.out / "samples.npz", images=test_images[:SAMPLES], labels=test_labels[:SAMPLES])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    metrics = {
        "test_top1": round(top1, 4),
        "test_images": len(test_labels),
        "measured_with": "onnxruntime CPU, edgecam.preprocessing.preprocess",
        "epochs": args.epochs,
        "seed": args.seed,
        "params": int(sum(p.numel() for p in net.parameters())),
        "onnx_bytes": onnx_file.stat().st_size,
        "train_seconds": round(time.time() - started),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "machine": f"{platform.machine()} {cpu}, {torch.get_num_threads()} threads",
        "date": datetime.now(UTC).date().isoformat(),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
