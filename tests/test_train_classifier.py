"""The classifier's training entrypoint on tiny synthetic MNIST idx files: export, statistics, model card."""

import gzip
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from diffexp.models.classifier import load_classifier
from diffexp.evaluation.fid import MnistFeatures, ReferenceStats, extract, kid_sample_indices, mean_cov
from diffexp.training.classifier import load_split, train
from conftest import CONF


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _mnist_like(folder: Path, n_train: int = 256, n_test: int = 300) -> Path:
    """Digits drawn as a bright bar whose row is the label, plus noise."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label : 6 + 2 * label, 6:22] = 255
        _write_idx(folder / f"{split}-images.idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels.idx1-ubyte.gz", labels)
    return folder


def test_export_has_weights_statistics_and_card(tmp_path: Path) -> None:
    data = _mnist_like(tmp_path / "mnist")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train_classifier",
            overrides=[f"data.path={data}", f"export_dir={tmp_path}/out", "epochs=2", "batch_size=32", "threads=1",
                       "kid_sample=100", "calibration_sizes=[64,200]"],
        )
    info = train(cfg)
    out = tmp_path / "out"
    model = load_classifier(out)
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    assert (out / "model.safetensors").stat().st_size < 1_000_000
    test_x, test_y = load_split(str(data), "t10k")
    assert info["accuracy"] > 0.2  # chance is 0.1
    stats = ReferenceStats.load(out / "reference_stats.safetensors")
    features = extract(MnistFeatures(model), (test_x + 1) / 2)
    mean, cov = mean_cov(features)
    assert stats.num_images == 300 and torch.allclose(stats.mean, mean) and torch.allclose(stats.cov, cov)
    assert torch.allclose(stats.kid_features, features[kid_sample_indices(300, 100)].float())
    card = (out / "README.md").read_text()
    assert "CC BY-SA 3.0" in card and f"{100 * info['accuracy']:.2f} %" in card
    calibration = {(r["set"], r["num_images"]): r["fid"] for r in info["calibration"]}
    assert set(calibration) == {(s, n) for s in ("real", "blurred", "noise") for n in (64, 200)}
    assert calibration[("real", 200)] < calibration[("noise", 200)]
