"""FID and KID of image sets on pluggable features, and the end-of-run distribution metrics.

- FID (Heusel et al. 2017): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), covariances with n − 1, in float64.
  Tr((Σ₁Σ₂)^½) is computed from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (same spectrum).
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased MMD² estimate with the kernel
  k(x, y) = (xᵀy / d + 1)³, mean and std over random subsets (as torchmetrics' KernelInceptionDistance);
  the subset size adapts to small sets (min of 1000 and both set sizes); the subsets come from a seeded
  generator, so the same images give the same value. Two sets of the same size up to 1000 images (an inverse
  task's outputs against its ground truths) would give identical subsets: KID is then n/a, with its reason.

Features (``metrics.fid_features``): ``mnist`` — the 128-d penultimate layer of the shipped MNIST
classifier (``diffexp/weights/mnist_classifier``); ``inception`` — torchmetrics' InceptionV3 (torch-fidelity's
``FeatureExtractorInceptionV3``, 2048-d pool features, the standard FID network), whose weights must be in
``$TORCH_HOME/hub/checkpoints/`` (``make prefetch``); ``auto`` — mnist for 1-channel 28-px models, else inception.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffexp.models.classifier import CLASSIFIER_DIR, MnistClassifier, load_classifier
from diffexp.data.loaders import IMAGE_SUFFIXES, _load_image
from diffexp.data.ranges import to_unit
from diffexp.rundir.files import image_name, write_json

log = logging.getLogger(__name__)
FEATURES = ("auto", "mnist", "inception")
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name (its release URL)
MNIST_REFERENCE = CLASSIFIER_DIR / "reference_stats.safetensors"
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_REFERENCE_SAMPLE = 1000  # reference features kept for KID (a seeded random subset of the reference set)
BATCH = 250
_warned: set[str] = set()


def inception_weights_path() -> Path:
    """Where torch-fidelity's InceptionV3 weights are expected (``$TORCH_HOME/hub/checkpoints/``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def cache_dir() -> Path:
    """Reference statistics of image folders: ``$XDG_CACHE_HOME/diffexp/reference_stats`` (~/.cache by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffexp" / "reference_stats"


def resolve_features(features: str, *, channels: int, size: int) -> str:
    """``auto`` → ``mnist`` for 1-channel 28-px images, else ``inception``."""
    if features not in FEATURES:
        raise ValueError(f"metrics.fid_features={features!r} is invalid: allowed is one of {', '.join(FEATURES)}")
    if features == "auto":
        return "mnist" if (channels, size) == (1, 28) else "inception"
    return features


# ---------------------------------------------------------------------------------------------- features


class MnistFeatures(nn.Module):
    """The classifier's 128-d penultimate activations of images in [0, 1] (RGB averaged to gray, resized to 28 px)."""

    num_features = MnistClassifier.num_features

    def __init__(self, classifier: MnistClassifier | None = None) -> None:
        super().__init__()
        self.classifier = classifier if classifier is not None else load_classifier()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return self.classifier.features(x * 2 - 1)

    def logits(self, features: Tensor) -> Tensor:
        """Class logits from the features (the classifier's last layer)."""
        return self.classifier.head(features)


class InceptionFeatures(nn.Module):
    """InceptionV3 2048-d pool features (torchmetrics' ``NoTrainInceptionV3``) of images in [0, 1]; gray is
    repeated to RGB and pixels are rounded to uint8, as the network expects."""

    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net((x * 255).round().to(torch.uint8))


def inception_problem() -> str | None:
    """Why the inception features cannot be computed here (missing package or weights), or None."""
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        return "the inception features need the torch-fidelity package (pip install torch-fidelity)"
    path = inception_weights_path()
    if not path.is_file():
        return (
            f"InceptionV3 FID weights not found at {path}. Place {INCEPTION_WEIGHTS} under "
            "$TORCH_HOME/hub/checkpoints/ (run `make prefetch` on a machine with internet)"
        )
    return None


@torch.no_grad()
def extract(extractor: nn.Module, images: Tensor, batch_size: int = BATCH) -> Tensor:
    """(N, d) float64 features of images in [0, 1], in batches."""
    chunks = [extractor(images[k : k + batch_size].float()).double() for k in range(0, len(images), batch_size)]
    return torch.cat(chunks)


# -------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class ReferenceStats:
    """Mean and covariance of a reference set's features (for FID) and a feature sample (for KID)."""

    mean: Tensor
    cov: Tensor
    num_images: int
    kid_features: Tensor
    description: str

    @classmethod
    def from_features(cls, features: Tensor, *, description: str, kid_sample: int = KID_REFERENCE_SAMPLE) -> ReferenceStats:
        mean, cov = mean_cov(features)
        keep = kid_sample_indices(len(features), kid_sample)
        return cls(mean, cov, len(features), features[keep].float(), description)

    def save(self, path: Path) -> None:
        tensors = {"mean": self.mean, "cov": self.cov, "kid_features": self.kid_features.contiguous()}
        meta = {"num_images": str(self.num_images), "description": self.description}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> ReferenceStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return cls(t["mean"].double(), t["cov"].double(), int(meta["num_images"]), t["kid_features"], meta["description"])


def kid_sample_indices(n: int, k: int) -> Tensor:
    """The (sorted) rows of a reference set kept for KID: a random subset of k, seed 0."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values


def mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased (n − 1) covariance of (N, d) features, in float64."""
    f = features.double()
    centred = f - f.mean(dim=0)
    return f.mean(dim=0), centred.T @ centred / (len(f) - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr((Σ₁Σ₂)^½), in float64 (Heusel et al. 2017, eq. 6)."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt)


def mmd2(x: Tensor, y: Tensor) -> Tensor:
    """The unbiased MMD² estimate between the rows of ``x`` and ``y`` (m each) with the polynomial kernel
    k(x, y) = (xᵀy/d + 1)³ (Bińkowski et al. 2018, eq. 2 and 4), in float64."""
    m, gamma = len(x), 1.0 / x.shape[1]
    k_xx, k_yy, k_xy = ((p @ q.T * gamma + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def kernel_distance(
    a: Tensor, b: Tensor, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> dict[str, Any]:
    """KID: ``mmd2`` over ``subsets`` random subsets of m = min(subset_size, len(a), len(b)) rows of each set;
    {mean, std, subset_size, subsets}. When both sets have m rows every subset is the whole of both sets, and
    the spread over subsets is 0 by construction: KID is then n/a, {mean: None, std: None, subset_size, reason}."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(a)} and {len(b)}")
    if len(a) == len(b) == m:
        reason = (
            f"{m} vs {m} images, at most the subset size {subset_size}: every subset is the whole set (a std "
            f"over subsets of 0 by construction); KID needs more than {subset_size} images or sets of unequal size"
        )
        return {"mean": None, "std": None, "subset_size": m, "reason": reason}
    a, b = a.double(), b.double()
    g = torch.Generator().manual_seed(seed)
    scores = [
        mmd2(a[torch.randperm(len(a), generator=g)[:m]], b[torch.randperm(len(b), generator=g)[:m]])
        for _ in range(subsets)
    ]
    s = torch.stack(scores)
    return {"mean": float(s.mean()), "std": float(s.std(unbiased=False)), "subset_size": m, "subsets": subsets}


def fid_kid(features: Tensor, reference: ReferenceStats) -> dict[str, Any]:
    """FID against the reference mean/covariance and KID against its feature sample."""
    mean, cov = mean_cov(features)
    return {
        "fid": frechet_distance(mean, cov, reference.mean, reference.cov),
        "kid": kernel_distance(features, reference.kid_features),
    }


# ------------------------------------------------------------------------------------------ image files


def load_images(paths: list[Path], *, channels: int, size: int) -> Tensor:
    """Images in [0, 1], converted to ``channels`` and centre-cropped/resized to ``size`` as data=folder does."""
    return torch.stack([to_unit(_load_image(p, channels, size)) for p in paths])


def folder_reference(
    path: str, extractor: nn.Module, *, features: str, channels: int, size: int
) -> ReferenceStats:
    """Reference statistics of every PNG/JPEG in ``path``, cached in ``cache_dir()`` under a hash of the
    files' names and bytes, the features and the image size (a changed folder gets new statistics)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"metrics.reference={str(root)!r} is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"metrics.reference={str(root)!r} holds {len(files)} PNG/JPEG images; FID needs at least 2")
    digest = hashlib.sha256(f"{features}|{channels}|{size}".encode())
    for p in files:
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    cached = cache_dir() / f"{features}-{channels}x{size}-{digest.hexdigest()[:20]}.safetensors"
    if cached.is_file():
        return ReferenceStats.load(cached)
    chunks = [
        extract(extractor, load_images(files[k : k + BATCH], channels=channels, size=size))
        for k in range(0, len(files), BATCH)
    ]
    stats = ReferenceStats.from_features(torch.cat(chunks), description=f"{root} ({len(files)} images)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    stats.save(tmp)
    os.replace(tmp, cached)
    log.info("reference statistics of %s cached in %s", root, cached)
    return stats


# ------------------------------------------------------------------------------------ end-of-run metrics


class DistributionMetrics:
    """FID/KID of a run's saved images, computed once at the end from ``images/`` (so resumed runs count all).

    ``task=generate``: outputs against the reference statistics (``reference`` folder, else the shipped MNIST
    test-set statistics for the mnist features), and the class histogram/coverage (mnist features).
    Inverse tasks: outputs and baselines against the run's ground truths, and the classifier's accuracy
    (mnist features): how often the label it gives an output (baseline) is the label it gives the truth.
    Built before sampling: missing weights or reference are reported then (an error when ``required``).
    """

    def __init__(
        self, *, features: str, channels: int, size: int, has_truth: bool, reference: str | None, required: bool
    ) -> None:
        self.features = resolve_features(features, channels=channels, size=size)
        self.channels, self.size, self.has_truth = channels, size, has_truth
        self.extractor: nn.Module | None = None
        self.reference: ReferenceStats | None = None
        problem = inception_problem() if self.features == "inception" else None
        if problem is None and not has_truth and reference is None and self.features == "inception":
            problem = "task=generate with the inception features needs reference images: set metrics.reference=<folder>"
        if problem is not None:
            if required:
                raise FileNotFoundError(f"{problem} (metrics.fid_required=true)")
            if problem not in _warned:
                log.warning("%s: fid and kid are reported as null", problem)
                _warned.add(problem)
            return
        self.extractor = MnistFeatures() if self.features == "mnist" else InceptionFeatures(inception_weights_path())
        if has_truth:
            if reference is not None:
                log.warning("metrics.reference is used by task=generate; inverse tasks compare with their ground truths")
        elif reference is not None:
            self.reference = folder_reference(
                reference, self.extractor, features=self.features, channels=channels, size=size
            )
        else:
            self.reference = ReferenceStats.load(MNIST_REFERENCE)

    def __call__(self, images_dir: Path, indices: list[int]) -> dict[str, Any] | None:
        """The ``distribution`` block of metrics.json for the images ``indices`` of ``images_dir``."""
        if self.extractor is None or len(indices) < 2:
            return None
        load = lambda suffix: self._features([images_dir / image_name(i, suffix) for i in indices])  # noqa: E731
        outputs = load("")
        if self.has_truth:
            truth, baseline = load("_truth"), load("_measurement")
            reference = ReferenceStats.from_features(truth, description=f"ground truths ({len(indices)} images)")
        else:
            reference = self.reference
        out: dict[str, Any] = {
            "features": self.features, "num_images": len(indices),
            "reference": reference.description, "reference_images": reference.num_images,
            **fid_kid(outputs, reference),
        }
        if self.has_truth:
            base = fid_kid(baseline, reference)
            out.update(baseline_fid=base["fid"], baseline_kid=base["kid"])
        if isinstance(self.extractor, MnistFeatures):
            labels = lambda f: self.extractor.logits(f.float()).argmax(dim=1)  # noqa: E731
            if self.has_truth:
                truth_labels = labels(truth)
                out["accuracy"] = float((labels(outputs) == truth_labels).double().mean())
                out["baseline_accuracy"] = float((labels(baseline) == truth_labels).double().mean())
            else:
                histogram = torch.bincount(labels(outputs), minlength=MnistClassifier.num_classes)
                out["class_histogram"] = histogram.tolist()
                out["class_coverage"] = float((histogram > 0).double().mean())
        return out

    def _features(self, paths: list[Path]) -> Tensor:
        return torch.cat(
            [extract(self.extractor, load_images(paths[k : k + BATCH], channels=self.channels, size=self.size))
             for k in range(0, len(paths), BATCH)]
        )

    @classmethod
    def from_metrics_config(cls, node: Any, *, channels: int, size: int, has_truth: bool) -> DistributionMetrics | None:
        """From the run's ``metrics`` node (keys fid, fid_features, fid_required, reference); None if fid=false."""
        if not node.get("fid", True):
            if node.get("fid_required", False):
                raise ValueError("metrics.fid_required=true contradicts metrics.fid=false")
            return None
        return cls(
            features=node.get("fid_features", "auto"), channels=channels, size=size, has_truth=has_truth,
            reference=node.get("reference"), required=bool(node.get("fid_required", False)),
        )


def add_distribution(result: dict[str, Any], distribution: DistributionMetrics | None, out_dir: Path) -> dict[str, Any]:
    """``result`` plus its ``distribution`` block, also written to metrics.json: computed from the saved images
    when the run finished (status ok or diverged), else None (also when fid=false or its features are missing)."""
    block = None
    if distribution is not None and result["status"] in ("ok", "diverged"):
        block = distribution(Path(out_dir) / "images", [row["index"] for row in result["per_image"]])
    result = {**result, "distribution": block}
    write_json(Path(out_dir) / "metrics.json", result)
    return result


def summary_values(block: dict[str, Any] | None) -> dict[str, Any]:
    """Flat keys of a ``distribution`` block for trackers and sweep tables: ``fid``, ``kid/mean``, ``kid/std``,
    ``baseline/fid``, ``baseline/kid/{mean,std}``, ``accuracy``, ``baseline/accuracy``, ``class_coverage``,
    ``fid_features``, ``fid_images``; {} when there is no block."""
    if not block:
        return {}
    out: dict[str, Any] = {"fid_features": block["features"], "fid_images": block["num_images"]}
    for prefix, key in (("", ""), ("baseline/", "baseline_")):
        if f"{key}fid" in block:
            out[f"{prefix}fid"] = block[f"{key}fid"]
            out.update({f"{prefix}kid/{stat}": block[f"{key}kid"][stat] for stat in ("mean", "std")})
        if f"{key}accuracy" in block:
            out[f"{prefix}accuracy"] = block[f"{key}accuracy"]
    if "class_coverage" in block:
        out["class_coverage"] = block["class_coverage"]
    return out
