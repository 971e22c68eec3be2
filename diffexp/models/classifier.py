"""A small MNIST classifier whose penultimate layer gives the ``mnist`` features of FID/KID.

Trained by ``python -m diffexp.training.classifier`` (``conf/train_classifier.yaml``) and shipped in
``diffexp/weights/mnist_classifier/`` (weights, model card, reference statistics of the MNIST test set).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

CLASSIFIER_DIR = Path(__file__).parents[1] / "weights" / "mnist_classifier"
WEIGHTS_FILE = "model.safetensors"


class MnistClassifier(nn.Module):
    """Three 3×3 conv + max-pool stages (28 → 14 → 7 → 3 px), a 128-unit hidden layer, 10 logits.

    Input: (N, 1, 28, 28) images in [-1, 1]. ``features`` are the post-ReLU activations of the
    hidden layer (as FID's Inception features are post-ReLU pooled activations).
    """

    num_features = 128
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 3 * 3, self.num_features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.num_features, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, 128) penultimate activations of images in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 10) logits."""
        return self.head(self.dropout(self.features(x)))


def load_classifier(directory: Path = CLASSIFIER_DIR) -> MnistClassifier:
    """The shipped (or another exported) classifier, in eval mode, without gradients."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"MNIST classifier weights not found at {path} (python -m diffexp.training.classifier)")
    model = MnistClassifier()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def predict(model: MnistClassifier, x: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted class of each image in [-1, 1] (N, 1, 28, 28)."""
    return torch.cat([model(x[k : k + batch_size]).argmax(dim=1) for k in range(0, len(x), batch_size)])
