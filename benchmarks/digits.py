"""Quality check of generated digits with a small MNIST classifier (not shipped as a metric).

    python -m benchmarks.digits --mnist DIR --run RUN_DIR

trains the classifier on MNIST's training set (or loads ``--classifier`` if it exists), reports its
test accuracy (it must reach 98 %), then classifies ``RUN_DIR/images/*.png`` (a ``task=generate``
run) and writes the mean max-softmax confidence and the class histogram to ``RUN_DIR/digits.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffexp.data.loaders import read_idx

MIN_ACCURACY = 0.98


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def _split(mnist: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(next(mnist.glob(f"{name}-images*idx3-ubyte*")))
    y = read_idx(next(mnist.glob(f"{name}-labels*idx1-ubyte*")))
    return torch.from_numpy(x.copy()).float()[:, None] / 255 * 2 - 1, torch.from_numpy(y.copy()).long()


def train(mnist: Path, epochs: int = 2, seed: int = 0) -> tuple[nn.Module, float]:
    """Train on the 60k training digits ([-1, 1] inputs); return the model and its test accuracy."""
    torch.manual_seed(seed)
    x, y = _split(mnist, "train")
    model = classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), accuracy(model, *_split(mnist, "t10k"))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def score(model: nn.Module, run_dir: Path) -> dict:
    """Mean max-softmax confidence and class histogram of the run's output PNGs."""
    files = sorted(p for p in (run_dir / "images").glob("*.png") if p.stem.isdigit())
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32).copy()) for f in files])
    probs = model(x[:, None] / 255 * 2 - 1).softmax(1)
    conf, label = probs.max(1)
    return {
        "images": len(files),
        "mean_confidence": float(conf.mean()),
        "min_confidence": float(conf.min()),
        "histogram": np.bincount(label.numpy(), minlength=10).tolist(),
        "classes_present": int((np.bincount(label.numpy(), minlength=10) > 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, required=True, help="folder with the MNIST idx files")
    parser.add_argument("--run", type=Path, required=True, help="output dir of a task=generate run")
    parser.add_argument("--classifier", type=Path, default=Path("benchmarks/results/mnist_classifier.pt"))
    args = parser.parse_args()
    model = classifier()
    if args.classifier.is_file():
        model.load_state_dict(torch.load(args.classifier))
        acc = accuracy(model.eval(), *_split(args.mnist, "t10k"))
    else:
        model, acc = train(args.mnist)
        args.classifier.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.classifier)
    if acc < MIN_ACCURACY:
        raise SystemExit(f"classifier test accuracy {acc:.4f} < {MIN_ACCURACY}: not trustworthy")
    result = {"classifier_test_accuracy": acc, **score(model, args.run)}
    (args.run / "digits.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
