"""What K posterior samples of one measurement say beyond one sample: posterior mean and spread, best-of-K, diversity
and calibration, and the bootstrap confidence intervals of every run-level mean (``num_samples=K``).

Per image (``image_statistics``), from samples x_1..x_K (in [-1, 1]) of one y and the truth x*:

- the posterior mean x̄ (the MMSE estimate) and the per-pixel std s (unbiased, ``K − 1``), scored like a sample
  by ``diffexp.evaluation.metrics.Metrics`` (``posterior_mean_<metric>``);
- ``oracle_best_of_k_<metric>``: the best of the K samples against the truth, each metric on its own (highest PSNR
  and SSIM, lowest LPIPS). It uses the ground truth: an oracle, reported for comparison with tables that use it
  (DAPS's best of 4), never a method's result;
- diversity: ``pixel_std``, the mean over pixels of s in [0, 1] units, and ``pairwise_lpips``, the mean LPIPS over
  the K(K−1)/2 pairs of samples (None without the LPIPS backbone);
- calibration, per pixel from the rank of the truth among the samples. For a sampler of the exact posterior the
  truth is one more draw, exchangeable with the K samples, so its probability integral transform
  u = (rank + U)/(K + 1), U uniform, is uniform on [0, 1]: the central interval at level p of the samples
  (between the order statistics that hold a fraction p of the K + 1 rank cells) covers the truth with probability
  exactly p, at every K. ``coverage_<p>`` is the expected fraction of pixels covered, computed without drawing U
  (the part of each pixel's rank cell inside [(1 − p)/2, (1 + p)/2]); ties (saturated pixels where truth and
  samples are all −1) spread the cell over the tied ranks. Plain sample quantiles would under-cover at small K
  (an exact sampler's 90 % interval from 8 samples covers about 70 %). The other side of exactness: for K < 19
  the 90 % interval reaches past the extreme samples, so a truth outside every sample still counts partly (the
  floor is max(0, (K + 1)(1 + p)/2 − K): 0.55 for p = 0.9, K = 8, below the warning's 0.75). ``coverage_curve``:
  the same at ``LEVELS``. ``z2``: the mean over pixels with s > 0 of ((x* − x̄)/s)², s floored at one grey level
  (``STD_FLOOR``: a pixel nearly saturated in every sample would otherwise dominate it); for an exact Gaussian
  posterior its expectation is ``z2_expected(K)`` = (1 + 1/K)(K − 1)/(K − 3) (a Student t with K − 1 degrees of
  freedom), 1 as K grows; larger means over-confident.

Run-level means (``aggregate``) carry a 95 % percentile bootstrap interval over images (``bootstrap_ci``:
``BOOTSTRAP_RESAMPLES`` resamples from a fixed seed, so the interval is reproducible); ``paired_ci`` does the same
for per-image differences between two runs on the same images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # nominal levels of the coverage curve
REPORTED = (0.5, 0.9)  # coverage_50, coverage_90 in metrics.json
OVERCONFIDENT = 0.75  # 90 % intervals covering less than this: the summary warns
STD_FLOOR = 2 / 255  # one 8-bit grey level in [-1, 1] units: the least spread z² divides by
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "aligned_psnr": True}


def level_key(p: float) -> str:
    """``coverage_50`` for 0.5, ``coverage_95`` for 0.95."""
    return f"coverage_{round(p * 100):d}"


def z2_expected(k: int) -> float | None:
    """E[((x* − x̄)/s)²] for x* and K samples from one Gaussian, s the unbiased sample std: (1 + 1/K)(K − 1)/(K − 3);
    None for K ≤ 3 (infinite)."""
    return (1 + 1 / k) * (k - 1) / (k - 3) if k > 3 else None


def coverage(samples: Tensor, truth: Tensor, levels: Sequence[float] = LEVELS) -> list[float]:
    """Expected fraction of the pixels of ``truth`` (C, H, W) inside the central interval at each level of
    ``samples`` (K, C, H, W), from the rank of the truth among the samples (module docstring)."""
    k = samples.shape[0]
    s, t = samples.double().flatten(1), truth.double().flatten()
    below = (s < t).sum(0).double()  # samples strictly below the truth
    tied = (s == t).sum(0).double()
    lo, hi = below / (k + 1), (below + tied + 1) / (k + 1)  # the truth's PIT cell (spread over tied ranks)
    out = []
    for p in levels:
        a, b = (1 - p) / 2, (1 + p) / 2
        inside = (torch.clamp(torch.minimum(hi, torch.tensor(b)) - torch.maximum(lo, torch.tensor(a)), min=0))
        out.append(float((inside / (hi - lo)).mean()))
    return out


def z_squared(samples: Tensor, truth: Tensor) -> float | None:
    """Mean over pixels with a positive sample std of ((x* − x̄)/max(s, ``STD_FLOOR``))² (s unbiased); None when no
    pixel varies."""
    s = samples.double().flatten(1)
    mean, std = s.mean(0), s.std(0, unbiased=True)
    keep = std > 1e-12
    if not bool(keep.any()):
        return None
    return float((((truth.double().flatten() - mean) / std.clamp(min=STD_FLOOR))[keep] ** 2).mean())


def mean_std(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel posterior mean and (unbiased) std of ``samples`` (K, C, H, W), float32 on the CPU."""
    s = samples.detach().float().cpu()
    return s.mean(0), s.std(0, unbiased=True) if s.shape[0] > 1 else torch.zeros_like(s[0])


@torch.no_grad()
def image_statistics(samples: Tensor, truth: Tensor, metrics: Any) -> dict[str, Any]:
    """The per-image row of a measurement's K samples (module docstring); ``metrics`` a ``Metrics``."""
    k = samples.shape[0]
    mean, std = mean_std(samples)
    samples, truth = samples.float().cpu(), truth.float().cpu()
    row: dict[str, Any] = {"num_samples": k}
    row.update({f"posterior_mean_{m}": v[0] for m, v in metrics(mean[None], truth[None]).items()})
    per = metrics(samples, truth.expand_as(samples))
    for m, values in per.items():
        finite = [v for v in values if v is not None and math.isfinite(v)]
        pick = max if HIGHER_IS_BETTER.get(m, True) else min
        row[f"oracle_best_of_k_{m}"] = pick(finite) if len(finite) == len(values) and finite else None
    row["pixel_std"] = float(std.mean()) / 2  # [-1, 1] → [0, 1] units
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    lpips = metrics(samples[[a for a, _ in pairs]], samples[[b for _, b in pairs]]).get("lpips") if pairs else None
    row["pairwise_lpips"] = float(np.mean(lpips)) if lpips and all(v is not None for v in lpips) else None
    curve = coverage(samples, truth)
    row.update({level_key(p): curve[LEVELS.index(p)] for p in REPORTED})
    row["coverage_curve"] = curve
    row["z2"] = z_squared(samples, truth)
    return row


def bootstrap_ci(values: Sequence[float], *, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """The 95 % percentile bootstrap interval of the mean of ``values`` (resampled over images, seeded); None for
    fewer than two values or any missing one."""
    if len(values) < 2 or any(v is None or not math.isfinite(v) for v in values):
        return None
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(lo), float(hi)]


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """{mean, std (population), ci} of per-image values; all None when any is missing."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return {"mean": None, "std": None, "ci": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "ci": bootstrap_ci(values)}


def aggregate(rows: Sequence[dict[str, Any]], metric_names: Sequence[str]) -> dict[str, Any]:
    """The run-level posterior blocks of ``metrics.json`` from the per-image rows of ``image_statistics``:
    ``posterior_mean``, ``oracle_best_of_k`` ({metric: {mean, std, ci}}), ``diversity`` and ``coverage``."""
    def block(prefix: str) -> dict[str, Any]:
        return {m: stats([r.get(f"{prefix}{m}") for r in rows]) for m in metric_names if f"{prefix}{m}" in rows[0]}

    k = int(rows[0]["num_samples"])
    curves = np.asarray([r["coverage_curve"] for r in rows], dtype=float)
    cov: dict[str, Any] = {level_key(p): stats([r[level_key(p)] for r in rows]) for p in REPORTED}
    cov["z2"] = stats([r.get("z2") for r in rows])
    cov["z2_expected"] = z2_expected(k)
    cov["curve"] = {"nominal": list(LEVELS), "empirical": [float(v) for v in curves.mean(0)],
                    "ci": [bootstrap_ci(list(curves[:, j])) for j in range(len(LEVELS))]}
    return {
        "posterior_mean": block("posterior_mean_"),
        "oracle_best_of_k": block("oracle_best_of_k_"),
        "diversity": {name: stats([r.get(name) for r in rows]) for name in ("pixel_std", "pairwise_lpips")},
        "coverage": cov,
    }


def paired_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean of the per-image differences a − b of two runs on the same images, with its bootstrap interval."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    return float(np.mean(diff)), bootstrap_ci(diff)


def overconfident(result: dict[str, Any]) -> str | None:
    """A warning line when the 90 % intervals cover less than ``OVERCONFIDENT`` of the truth, else None."""
    cov = ((result.get("coverage") or {}).get(level_key(0.9)) or {}).get("mean")
    if cov is None or cov >= OVERCONFIDENT:
        return None
    return (f"over-confident: the samples' 90% intervals cover {100 * cov:.0f}% of the true pixels (an exact posterior "
            "sampler covers 90%): the per-pixel spread understates the error")
