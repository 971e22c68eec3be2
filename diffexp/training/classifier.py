"""Train the MNIST classifier behind the ``mnist`` FID/KID features, and export it with reference statistics.

``python -m diffexp.training.classifier data.path=DIR`` (config ``conf/train_classifier.yaml``; DIR holds the
MNIST idx files ``train-images``/``train-labels``/``t10k-images``/``t10k-labels``, gzip or raw). Writes to
``export_dir``: ``model.safetensors``, ``reference_stats.safetensors`` (mean and covariance of the features
of the full test set, and a seeded sample of 1000 test features for KID) and the model card ``README.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from diffexp.models.classifier import WEIGHTS_FILE, MnistClassifier, predict
from diffexp.data.loaders import read_idx
from diffexp.data.ranges import from_unit
from diffexp.evaluation.fid import MNIST_REFERENCE, MnistFeatures, ReferenceStats, extract, fid_kid, kid_sample_indices
from diffexp.cli import hydra_main

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_split(path: str, split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) in [-1, 1] and labels of the MNIST ``train`` or ``t10k`` split."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={str(root)!r} is not a folder")
    found = {}
    for kind in ("images", "labels"):
        files = sorted(root.glob(f"{split}-{kind}*idx*-ubyte*"))
        if not files:
            raise FileNotFoundError(f"no MNIST {split}-{kind} idx file in {root}")
        found[kind] = read_idx(files[0])
    images = from_unit(torch.from_numpy(found["images"].copy()).float()[:, None] / 255)
    return images, torch.from_numpy(found["labels"].astype("int64"))


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``shift`` pixels (background −1 fills the border)."""
    if shift == 0:
        return x
    padded = F.pad(x, (shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=generator).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def calibrate(test_x: Tensor, extractor: MnistFeatures, stats: ReferenceStats, sizes: list[int]) -> list[dict]:
    """FID/KID against the reference of held-out test digits (not in the KID sample), of the same digits
    blurred (Gaussian 9×9, σ = 2 px, as task=deblur without noise) and of uniform noise, for sets of ``sizes``
    images: the scale on which generated sets fall."""
    in_kid = set(kid_sample_indices(len(test_x), len(stats.kid_features)).tolist())
    held_out = [i for i in range(len(test_x)) if i not in in_kid]
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in sizes:
        if n > len(held_out):
            raise ValueError(f"calibration_sizes: {n} is more than the {len(held_out)} test images outside the KID sample")
        real = (test_x[held_out[:n]] + 1) / 2
        sets = {"real": real, "blurred": gaussian_blur(real, kernel_size=9, sigma=2.0),
                "noise": torch.rand(real.shape, generator=g)}
        for name, images in sets.items():
            rows.append({"set": name, "num_images": n, **fid_kid(extract(extractor, images), stats)})
    return rows


def _kid_cell(kid: dict) -> str:
    """``mean ± std`` of a KID result, or ``n/a`` (sets too small for subsets that differ)."""
    return f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid["mean"] is not None else "n/a"


def write_card(out: Path, cfg: DictConfig, info: dict) -> None:
    text = f"""# diffexp MNIST classifier (features of the `mnist` FID/KID)

A small CNN (`diffexp.models.classifier.MnistClassifier`: three 3×3 conv + max-pool stages 32/64/64 channels,
a 128-unit ReLU layer whose activations are the FID/KID features, dropout 0.3, 10 logits; {info['params']:,}
parameters) trained with `python -m diffexp.training.classifier data.path=<MNIST idx folder>`.

- Data: MNIST training set (60,000 digits); test accuracy on the 10,000 test digits. MNIST by Yann LeCun and
  Corinna Cortes, licence CC BY-SA 3.0.
- Training: {cfg.epochs} epochs of batch {cfg.batch_size}, AdamW lr {cfg.lr} (one-cycle), weight decay
  {cfg.weight_decay}, random shifts of up to {cfg.shift} px, seed {cfg.seed}; {info['minutes']:.1f} min on a CPU
  ({info['threads']} threads).
- **Test accuracy: {100 * info['accuracy']:.2f} %** ({info['errors']} errors in 10,000).
- `reference_stats.safetensors`: mean and covariance (n − 1) of the 128-d features of the full MNIST test set
  (10,000 images), and the features of {info['kid_sample']} test images (a seeded random subset) for KID.
  These are the reference of `task=generate` with the `mnist` features.
- Input: (N, 1, 28, 28) images in [-1, 1].

Calibration (`diffexp.training.classifier.calibrate`): FID and KID against these statistics of held-out test
digits (not in the KID sample), of the same digits blurred (Gaussian 9×9, σ = 2 px) and of uniform noise.
FID is biased upwards on small sets (compare sets of equal size; prefer KID below a few thousand images).

| set | images | FID | KID (mean ± std over subsets) |
|---|---|---|---|
""" + "".join(
        f"| {r['set']} | {r['num_images']} | {r['fid']:.2f} | {_kid_cell(r['kid'])} |\n" for r in info["calibration"]
    )
    (out / "README.md").write_text(text)


def train(cfg: DictConfig) -> dict:
    """Train, evaluate on the test set, export weights, reference statistics and model card."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    train_x, train_y = load_split(cfg.data.path, "train")
    test_x, test_y = load_split(cfg.data.path, "t10k")
    torch.manual_seed(cfg.seed)
    model = MnistClassifier()
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(train_x) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    start = time.time()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_x), generator=g)
        total = 0.0
        for k in range(steps_per_epoch):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(random_shift(train_x[idx], cfg.shift, g)), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{cfg.epochs}: mean loss {total / steps_per_epoch:.4f}", flush=True)
    minutes = (time.time() - start) / 60
    model.eval().requires_grad_(False)
    errors = int((predict(model, test_x) != test_y).sum())
    export = Path(cfg.export_dir)
    export.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(export / WEIGHTS_FILE))
    features = extract(MnistFeatures(model), (test_x + 1) / 2)
    stats = ReferenceStats.from_features(
        features, description=f"MNIST test set ({len(test_x)} images)", kid_sample=cfg.kid_sample
    )
    stats.save(export / MNIST_REFERENCE.name)
    calibration = calibrate(test_x, MnistFeatures(model), stats, list(cfg.calibration_sizes))
    info = {
        "params": sum(p.numel() for p in model.parameters()), "minutes": minutes, "threads": torch.get_num_threads(),
        "accuracy": 1 - errors / len(test_x), "errors": errors, "kid_sample": len(stats.kid_features),
        "calibration": calibration,
    }
    write_card(export, cfg, info)
    print(f"test accuracy {100 * info['accuracy']:.2f} %; classifier written to {export}")
    return info


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    hydra_main(main)
