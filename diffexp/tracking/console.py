"""The end-of-run summary: a compact table logged (console and the run's log file) when a run ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffexp.tracking.base import Tracker

log = logging.getLogger("diffexp")


def _mean_std(stats: dict[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    std = stats.get("std")
    return f"{stats['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{stats['mean']:.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "residual": 3}


def _ci(stats: dict[str, Any] | None, digits: int, values: list[Any] | None = None) -> str:
    """``[low, high]``: the 95 % bootstrap interval of ``stats`` (``ci``), else of the per-image ``values``."""
    from diffexp.evaluation.posterior import bootstrap_ci

    ci = (stats or {}).get("ci") if stats and "ci" in stats else bootstrap_ci(values) if values else None
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _posterior_lines(result: dict[str, Any]) -> list[str]:
    """num_samples > 1: posterior-mean and best-of-K metrics, diversity and calibration, with their CIs."""
    from diffexp.evaluation.posterior import overconfident

    k = result.get("num_samples")
    lines = []
    for block, title in (("posterior_mean", f"posterior mean of {k} samples"),
                         ("oracle_best_of_k", f"oracle_best_of_k (best of {k} against the truth: an oracle)")):
        stats = result.get(block) or {}
        if stats:
            lines.append(f"  {title}:")
            lines += [f"  {name:<10}{_mean_std(v, DIGITS.get(name, 3)):<22}{_ci(v, DIGITS.get(name, 3))}"
                      for name, v in stats.items()]
    diversity = result.get("diversity") or {}
    if diversity:
        lines.append("  diversity: " + ", ".join(
            f"{name.replace('_', ' ')} {_mean_std(v, 3)} {_ci(v, 3)}".rstrip() for name, v in diversity.items()))
    cov = result.get("coverage") or {}
    if cov:
        parts = [f"{key.split('_')[1]}% intervals {_mean_std(cov[key], 3)} {_ci(cov[key], 3)}".rstrip()
                 for key in ("coverage_50", "coverage_90") if key in cov]
        expected = cov.get("z2_expected")
        z2 = f"z² {_mean_std(cov.get('z2'), 2)}" + (f" (exact sampler: {expected:.2f})" if expected else "")
        lines.append("  coverage of the truth: " + ", ".join([*parts, z2]))
    warning = overconfident(result)
    if warning:
        lines.append(f"  warning: {warning}")
    return lines


def summary_lines(result: dict[str, Any], out_dir: Path, hint: str | None = None) -> list[str]:
    """The summary of a run's ``metrics.json`` content: status, each metric (mean ± std) next to the
    baseline's, NFE and s/image, the paths of grid.png and metrics.json, and the tracker's ``hint`` line."""
    status = result.get("status")
    what = "/".join(str(result.get(k)) for k in ("task", "sampler") if result.get(k))
    lines = [f"{status}: {what} on {result.get('model')}, "
             f"{result.get('num_finished', 0)} of {result.get('num_images')} images"]
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    lines += [f"  warning: {w}" for w in result.get("warnings") or []]
    metrics, baseline = result.get("metrics") or {}, result.get("baseline") or {}
    rows = result.get("per_image") or []
    if metrics:
        what = "mean over samples" if result.get("num_samples") else "result"
        lines.append(f"  {'metric':<10}{what:<22}{'95% CI':<20}baseline")
        for name, stats in metrics.items():
            digits = DIGITS.get(name, 3)
            ci = _ci(stats, digits, [row.get(name) for row in rows] if rows else None)
            lines.append(f"  {name:<10}{_mean_std(stats, digits):<22}{ci:<20}{_mean_std(baseline.get(name), digits)}")
    lines += _posterior_lines(result)
    lines += _distribution_lines(result.get("distribution"))
    seconds = result.get("seconds_per_image")
    if result.get("nfe_per_sample") is not None:
        per_sample = result.get("seconds_per_sample")
        lines.append(f"  NFE {result.get('nfe')} per image ({result['nfe_per_sample']} per sample), "
                     + (f"{seconds:.2f} s/image ({per_sample:.2f} s/sample)" if seconds is not None else "no image"))
    else:
        lines.append(f"  NFE {result.get('nfe')}, " + (f"{seconds:.2f} s/image" if seconds is not None else "no image"))
    out_dir = Path(out_dir)
    for name in ("grid.png", "coverage.png", "metrics.json"):
        if (out_dir / name).is_file():
            lines.append(f"  {name + ':':<14}{out_dir / name}")
    if hint:
        lines.append(f"  {hint}")
    return [line.rstrip() for line in lines]


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def _distribution_lines(dist: dict[str, Any] | None) -> list[str]:
    """FID, KID (mean ± std over subsets) and classifier accuracy / class coverage, next to the baseline's."""
    if not dist or dist.get("fid") is None:
        return []
    lines = [
        f"  {'fid':<10}{_number(dist['fid'], 2):<22}{_number(dist.get('baseline_fid'), 2)}",
        f"  {'kid':<10}{_mean_std(dist.get('kid'), 3):<22}{_mean_std(dist.get('baseline_kid'), 3)}",
    ]
    reasons = [kid["reason"] for kid in (dist.get("kid"), dist.get("baseline_kid")) if kid and kid.get("reason")]
    lines += [f"  kid n/a: {reason}" for reason in dict.fromkeys(reasons)]  # the baseline's is the same one
    if dist.get("accuracy") is not None:
        lines.append(f"  {'accuracy':<10}{_number(dist['accuracy'], 3):<22}{_number(dist.get('baseline_accuracy'), 3)}")
    if dist.get("class_coverage") is not None:
        lines.append(f"  class coverage {_number(dist['class_coverage'], 2)}")
    lines.append(f"  (FID/KID on {dist.get('num_images')} images, {dist.get('features')} features: biased on small sets)")
    return lines


def log_summary(result: dict[str, Any], out_dir: Path, tracker: Tracker | None = None) -> None:
    """Log ``summary_lines`` (a warning unless the run is ok), ending with the tracker's ``console_hint()``."""
    text = "\n".join(summary_lines(result, out_dir, tracker.console_hint() if tracker is not None else None))
    log.log(logging.INFO if result.get("status") == "ok" else logging.WARNING, "%s", text)
