"""Quality check of generated digits with the shipped MNIST classifier.

    python -m benchmarks.digits --run RUN_DIR [--mnist DIR] [--classifier DIR]

classifies ``RUN_DIR/images/*.png`` (a ``task=generate`` run on 28-px gray images) with the classifier shipped in
``diffexp/weights/mnist_classifier/`` (the one behind the ``mnist`` FID/KID features, loaded by
``diffexp.models.classifier.load_classifier``) and writes the mean and minimum max-softmax confidence and the
class histogram to ``RUN_DIR/digits.json``. With ``--mnist DIR`` (a folder with the MNIST idx files) it first
measures the classifier's accuracy on the 10,000 test digits, which must reach 98 %; without it the accuracy
reported is the one in the classifier's model card (``README.md`` next to its weights).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffexp.models.classifier import CLASSIFIER_DIR, MnistClassifier, load_classifier, predict

MIN_ACCURACY = 0.98
CARD_ACCURACY = re.compile(r"Test accuracy: ([0-9.]+) %")


def card_accuracy(directory: Path) -> float | None:
    """The test accuracy stated in the model card (``README.md``) of a classifier folder, or None."""
    card = Path(directory) / "README.md"
    found = CARD_ACCURACY.search(card.read_text()) if card.is_file() else None
    return float(found.group(1)) / 100 if found else None


def mnist_test_accuracy(model: MnistClassifier, mnist: Path) -> float:
    """Accuracy on MNIST's 10,000 test digits (the ``t10k`` idx files in ``mnist``)."""
    from diffexp.training.classifier import load_split

    x, y = load_split(str(mnist), "t10k")
    return float((predict(model, x) == y).float().mean())


@torch.no_grad()
def score(model: MnistClassifier, run_dir: Path, batch_size: int = 500) -> dict:
    """Mean max-softmax confidence and class histogram of the run's output PNGs."""
    files = sorted(p for p in (run_dir / "images").glob("*.png") if p.stem.isdigit())
    if not files:
        raise SystemExit(f"no output PNGs (<index>.png) in {run_dir / 'images'}")
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32).copy()) for f in files])
    if tuple(x.shape[1:]) != (28, 28):
        raise SystemExit(f"{files[0]}: {x.shape[2]}×{x.shape[1]} px; the MNIST classifier needs 28×28 images")
    x = x[:, None] / 255 * 2 - 1
    probs = torch.cat([model(x[k : k + batch_size]).softmax(1) for k in range(0, len(x), batch_size)])
    conf, label = probs.max(1)
    histogram = np.bincount(label.numpy(), minlength=10)
    return {
        "images": len(files),
        "mean_confidence": float(conf.mean()),
        "min_confidence": float(conf.min()),
        "histogram": histogram.tolist(),
        "classes_present": int((histogram > 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="output dir of a task=generate run")
    parser.add_argument("--mnist", type=Path, help="folder with the MNIST idx files: measure the test accuracy")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_DIR,
                        help="classifier folder (default: the shipped one)")
    args = parser.parse_args()
    model = load_classifier(args.classifier)
    if args.mnist is not None:
        acc, source = mnist_test_accuracy(model, args.mnist), "measured on the MNIST test set"
    else:
        acc, source = card_accuracy(args.classifier), "model card"
    if acc is not None and acc < MIN_ACCURACY:
        raise SystemExit(f"classifier test accuracy {acc:.4f} < {MIN_ACCURACY}: not trustworthy")
    result = {"classifier": str(args.classifier), "classifier_test_accuracy": acc,
              "classifier_test_accuracy_source": source, **score(model, args.run)}
    (args.run / "digits.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
