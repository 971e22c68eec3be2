"""Sweep report: ``python -m diffexp.report <multirun dir>``.

Reads every job's ``metrics.json`` and ``.hydra/overrides.yaml`` and writes, into the multirun dir,
``summary.csv`` (one row per job, all numbers), ``summary.md`` (swept overrides → metrics, best row
marked by ``optimized_metric``) and ``metric_vs_<key>.png`` (PSNR/SSIM/LPIPS against each numeric
swept key, one line per combination of the other swept keys). A job that failed or died is a row with
status ``failed`` and its error.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

PLOTTED = ("psnr", "ssim", "lpips")
LOWER_IS_BETTER = ("lpips", "residual")
JOB_ERROR_FILE = "job_error.json"  # written by diffexp.callbacks.SweepReport when a job raises


@dataclass
class Job:
    """One job of a multirun, as found on disk."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str
    error: str | None
    result: dict[str, Any]


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """``["a.b=0.3", "+c=x", "~d"]`` → ``{"a.b": "0.3", "c": "x"}`` (values as written; deletions dropped)."""
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def as_number(value: str | None) -> float | None:
    """An override value as a number (``"0.3"``, ``"1e-3"``, ``"4"``), None if it is not one."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _job_sort_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def load_job(path: Path) -> Job:
    """Read one job directory; missing or unfinished results become status ``failed`` with a reason."""
    overrides = parse_overrides(yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or [])
    metrics = path / "metrics.json"
    if not metrics.is_file():
        error_file = path / JOB_ERROR_FILE
        if error_file.is_file():
            error = json.loads(error_file.read_text())["error"]
        else:
            error = "no metrics.json: the job died before writing results (see its .log file)"
        return Job(path.name, path, overrides, "failed", error, {})
    result = json.loads(metrics.read_text())
    status, error = result.get("status", "failed"), result.get("error")
    if status == "running":
        status = "failed"
        error = f"did not finish: {result.get('num_finished')} of {result.get('num_images')} images (killed?)"
    return Job(path.name, path, overrides, status, error, result)


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory (one with ``.hydra/overrides.yaml``) directly under ``sweep_dir``, in job order."""
    paths = [p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    if not paths:
        raise ValueError(f"{sweep_dir} holds no Hydra job directories (*/.hydra/overrides.yaml)")
    return [load_job(p) for p in sorted(paths, key=_job_sort_key)]


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def optimized_metric(jobs: Sequence[Job]) -> str:
    """``optimized_metric`` of the sweep, from the first job's saved config (default psnr)."""
    config = yaml.safe_load((jobs[0].path / ".hydra" / "config.yaml").read_text()) or {}
    return str(config.get("optimized_metric", "psnr"))


def metric_mean(job: Job, metric: str) -> float | None:
    value = (job.result.get("metrics", {}).get(metric) or {}).get("mean")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def best_job(jobs: Sequence[Job], metric: str) -> Job | None:
    """The finished job with the best mean ``metric`` (lowest for LPIPS and residual), None if none has it."""
    scored = [(metric_mean(j, metric), j) for j in jobs if j.status == "ok" and metric_mean(j, metric) is not None]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda pair: pair[0])[1]


def table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``summary.csv``: job, status, overrides, mean/std of metrics and baseline, timing."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    swept = swept_keys(jobs)
    keys = swept + [k for k in keys if k not in swept]
    stats: list[str] = []
    for block, prefix in (("metrics", ""), ("baseline", "baseline_")):
        names = dict.fromkeys(m for job in jobs for m in job.result.get(block, {}))
        stats += [f"{prefix}{m}_{s}" for m in names for s in ("mean", "std")]
    best = best_job(jobs, optimized_metric(jobs))
    columns = ["job", "status", *keys, *stats, "nfe", "seconds_per_image", "num_finished", "best", "error"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status, **job.overrides}
        for block, prefix in (("metrics", ""), ("baseline", "baseline_")):
            for m, values in job.result.get(block, {}).items():
                row.update({f"{prefix}{m}_{s}": values.get(s) for s in ("mean", "std")})
        row.update({k: job.result.get(k) for k in ("nfe", "seconds_per_image", "num_finished")})
        row["best"] = job is best
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _override(value: str | None) -> str:
    """An override value for the Markdown table: long numbers (Optuna's) shortened to 4 digits."""
    number = as_number(value)
    return f"{number:.4g}" if number is not None and len(value or "") > 8 else _fmt(value)


def _mean_std(stats: dict[str, float | None]) -> str:
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None:
        return ""
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def markdown(jobs: Sequence[Job]) -> str:
    """The Markdown summary: constant overrides, then one row per job (swept keys → mean ± std)."""
    swept = swept_keys(jobs)
    constant = {k: v for k, v in jobs[0].overrides.items() if k not in swept}
    metric = optimized_metric(jobs)
    best = best_job(jobs, metric)
    metrics = list(dict.fromkeys(m for job in jobs for m in job.result.get("metrics", {})))
    lines = [f"# Sweep {jobs[0].path.parent.name}", ""]
    if constant:
        lines += ["Fixed: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in constant.items()), ""]
    header = ["", "job", "status", *swept, *metrics, "nfe", "s/image", "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        cells = [_mean_std(job.result.get("metrics", {}).get(m) or {}) for m in metrics]
        row = [
            "★" if job is best else "", job.name, job.status, *[_override(job.overrides.get(k)) for k in swept],
            *cells, _fmt(job.result.get("nfe")), _fmt(job.result.get("seconds_per_image")), _fmt(job.error),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    direction = "lowest" if metric in LOWER_IS_BETTER else "highest"
    if best is None:
        lines.append(f"No finished job has a {metric} value.")
    else:
        chosen = ", ".join(f"{k}={_override(best.overrides.get(k))}" for k in swept) or "all jobs alike"
        lines.append(f"★ best ({direction} mean {metric}): job {best.name} ({chosen}): {metric_mean(best, metric):.4g}")
    return "\n".join(lines) + "\n"


def series(jobs: Sequence[Job], key: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """Points (value of ``key``, mean ``metric``) of the finished jobs, one series per other swept key combo."""
    others = [k for k in swept_keys(jobs) if k != key]
    out: dict[str, list[tuple[float, float]]] = {}
    for job in jobs:
        x, y = as_number(job.overrides.get(key)), metric_mean(job, metric)
        if job.status != "ok" or x is None or y is None:
            continue
        label = ", ".join(f"{k}={job.overrides.get(k)}" for k in others) or "all"
        out.setdefault(label, []).append((x, y))
    return {label: sorted(points) for label, points in out.items()}


def plot(jobs: Sequence[Job], key: str, path: Path) -> bool:
    """Write ``metric_vs_<key>.png`` (one panel per metric in PSNR/SSIM/LPIPS); False if nothing to plot."""
    panels = [(m, series(jobs, key, m)) for m in PLOTTED]
    panels = [(m, s) for m, s in panels if s]
    if not panels:
        return False
    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    xs = [x for _, s in panels for points in s.values() for x, _ in points]
    for ax, (metric, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for label, points in lines.items():
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (mean)")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return True


def write_report(sweep_dir: Path) -> tuple[list[Path], list[str], list[dict[str, Any]]]:
    """Write summary.csv, summary.md and the plots into ``sweep_dir``; returns (files, columns, rows)."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    columns, rows = table(jobs)
    csv_path = sweep_dir / "summary.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path = sweep_dir / "summary.md"
    md_path.write_text(markdown(jobs))
    files = [csv_path, md_path]
    for key in swept_keys(jobs):
        png = sweep_dir / f"metric_vs_{key.replace('/', '_')}.png"
        if plot(jobs, key, png):
            files.append(png)
    return files, columns, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffexp.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (hydra.sweep.dir)")
    parser.add_argument("--wandb-project", help="also log the report to W&B, as a run of job_type report")
    parser.add_argument("--wandb-entity", help="W&B entity (default: yours)")
    parser.add_argument("--wandb-group", help="W&B group (default: the sweep directory's name, as its jobs)")
    parser.add_argument("--wandb-mode", default="auto", help="auto (default), online, offline")
    parser.add_argument("--wandb-init-timeout", type=float, default=30.0, help="seconds before offline fallback")
    args = parser.parse_args(argv)
    files, columns, rows = write_report(args.sweep_dir)
    for path in files:
        print(path)
    if args.wandb_project:
        from diffexp.loggers.wandb import log_report  # imports wandb, only when asked

        log_report(
            args.sweep_dir, files, columns, rows, project=args.wandb_project, entity=args.wandb_entity,
            group=args.wandb_group, mode=args.wandb_mode, init_timeout=args.wandb_init_timeout,
        )


if __name__ == "__main__":
    main()
