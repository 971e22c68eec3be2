"""Sweep report: ``python -m diffexp.tracking.report <multirun dir>``.

Reads every job's ``metrics.json`` and the settings its run recorded (``run_config.yaml``, written only by the
run that claimed the directory; ``.hydra/overrides.yaml`` and ``config.yaml`` for older jobs) and writes, into the
multirun dir,
``summary.csv`` (one row per job, all numbers), ``summary.md`` (one row per configuration: swept keys →
mean ± std pooled over seeds and images, n; the best configuration by ``optimized_metric`` marked ★,
diverged runs ⚠ and never best) and ``metric_vs_<key>.png`` (PSNR/SSIM/LPIPS against each numeric swept
key, one line per combination of the other swept keys). ``seed`` is never a configuration key: seeds
repeat a configuration. Every pooled mean has its 95 % bootstrap interval over images (``<metric> 95% CI``), and
``summary.md`` ends with the *paired* comparison of the configurations that ran on the same images (same task and
data): the per-image difference of ``optimized_metric`` to the best one, with its bootstrap interval, marked not
significant when the interval includes 0 (``paired_differences``); runs with ``num_samples`` > 1 add the
posterior mean's metric and the coverage of the 90 % intervals. A job that failed or died is a row with status ``failed`` and its error, and so is a job
whose files cannot be read (a garbled ``metrics.json``, ``overrides.yaml``, ``config.yaml`` or ``job_error.json``):
the report is written all the same. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from diffexp.errors import NotASweepError
from diffexp.evaluation.posterior import bootstrap_ci
from diffexp.rundir.files import read_metrics, replacing, write_text
from diffexp.rundir.runconfig import RUN_CONFIG, RunConfigUnreadable, read_run_config

PLOTTED = ("psnr", "ssim", "lpips")
LOWER_IS_BETTER = ("lpips", "residual")
REPEAT_KEYS = ("seed",)  # swept to repeat a configuration: pooled in the report, never a "best" value
JOB_ERROR_FILE = "job_error.json"  # written by diffexp.tracking.callbacks.SweepReport when a job raises


@dataclass
class Job:
    """One job of a multirun, as found on disk."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str
    error: str | None
    result: dict[str, Any]
    optimized_metric: str | None = None  # from the job's recorded config


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


def _job_error(path: Path) -> str:
    """The error a failed job left in ``job_error.json``, or what is wrong with that file."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        return f"the job failed; its {path} cannot be read ({getattr(err, 'strerror', None) or err})"
    if not isinstance(record, dict) or not isinstance(record.get("error"), str):
        return f"the job failed; its {path} holds no error message"
    return record["error"]


def load_job(path: Path) -> Job:
    """Read one job directory; missing, unfinished or unreadable results become status ``failed`` with a reason."""
    try:
        lines, config = read_run_config(path)
    except RunConfigUnreadable as err:
        return Job(path.name, path, {}, "failed", str(err), {})
    overrides = parse_overrides(lines)
    metric = config.get("optimized_metric")
    metric = None if metric is None else str(metric)
    metrics = path / "metrics.json"
    if not metrics.is_file():
        error_file = path / JOB_ERROR_FILE
        if error_file.is_file():
            error = _job_error(error_file)
        else:
            error = "no metrics.json: the job died before writing results (see its .log file)"
        return Job(path.name, path, overrides, "failed", error, {}, metric)
    result, problem = read_metrics(metrics)
    if result is None:
        return Job(path.name, path, overrides, "failed", f"{metrics} {problem}", {}, metric)
    status, error = result.get("status", "failed"), result.get("error")
    if status == "running":
        status = "failed"
        error = f"did not finish: {result.get('num_finished')} of {result.get('num_images')} images (killed?)"
    return Job(path.name, path, overrides, status, error, result, metric)


def job_paths(sweep_dir: Path) -> list[Path]:
    """The job directories (those with ``.hydra/overrides.yaml`` or ``run_config.yaml``) directly under
    ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return [p for p in sweep_dir.iterdir()
            if (p / ".hydra" / "overrides.yaml").is_file() or (p / RUN_CONFIG).is_file()]


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory (``job_paths``) directly under ``sweep_dir``, in job order."""
    paths = job_paths(sweep_dir)
    if not paths:
        hint = " (it is a single run's output directory)" if (Path(sweep_dir) / ".hydra").is_dir() else ""
        raise NotASweepError(
            f"{sweep_dir} is not a sweep directory{hint}: it holds no Hydra job directories "
            "(*/.hydra/overrides.yaml); pass the directory of a `python run.py -m ...` multirun"
        )
    return [load_job(p) for p in sorted(paths, key=_job_sort_key)]


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def config_keys(jobs: Sequence[Job]) -> list[str]:
    """The swept keys that define a configuration: all but the repeat keys (``seed``)."""
    return [k for k in swept_keys(jobs) if k not in REPEAT_KEYS]


def optimized_metric(jobs: Sequence[Job]) -> str:
    """``optimized_metric`` of the sweep, from the first job whose recorded config names it (default psnr)."""
    return next((job.optimized_metric for job in jobs if job.optimized_metric is not None), "psnr")


@dataclass
class Config:
    """The jobs of one configuration (same values of the swept keys, any seed) and their pooled metrics."""

    values: dict[str, str]
    jobs: list[Job]

    @property
    def name(self) -> str:
        return ",".join(job.name for job in self.jobs)

    @property
    def status(self) -> str:
        """``ok`` when every job is; else the count of each status (``ok 2, diverged 1``)."""
        counts = Counter(job.status for job in self.jobs)
        return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{s} {n}" for s, n in counts.items())

    @property
    def eligible(self) -> bool:
        """Only a configuration whose every run finished ``ok`` can be best (never a diverged one)."""
        return all(job.status == "ok" for job in self.jobs)

    def per_image(self, key: str) -> dict[int, float] | None:
        """``key`` of each image index (``per_image`` rows), averaged over the finished seeds that have it; None
        when a finished job lacks a value for one of its images."""
        values: dict[int, list[float]] = {}
        for job in self.jobs:
            if job.status not in ("ok", "diverged"):
                continue
            for row in job.result.get("per_image") or []:
                v = row.get(key)
                if not (isinstance(v, (int, float)) and math.isfinite(v)):
                    return None
                values.setdefault(row["index"], []).append(float(v))
        return {i: sum(v) / len(v) for i, v in values.items()} if values else None

    def stats(self, metric: str, block: str = "metrics") -> dict[str, Any]:
        """Mean ± std of ``metric`` over the images of every finished seed, pooled, n (images), and the 95 %
        bootstrap interval of the mean over those images (``ci``; None without per-image values).

        Per-image values from ``metrics.json`` when present; else each job's mean/std (population) and
        image count, combined exactly: var = mean of (std² + mean²) − mean².
        """
        pooled: list[float] | None = []
        parts: list[tuple[float, float, int]] = []  # (mean, std, n) per job
        for job in self.jobs:
            if job.status not in ("ok", "diverged"):
                continue
            prefix = "" if block == "metrics" else "baseline_"
            values = [row.get(prefix + metric) for row in job.result.get("per_image") or []]
            if values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                mean = sum(values) / len(values)
                parts.append((mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), len(values)))
                pooled = None if pooled is None else pooled + values
                continue
            pooled = None
            stats = job.result.get(block, {}).get(metric) or {}
            if stats.get("mean") is not None and math.isfinite(stats["mean"]):
                n = int(job.result.get("num_finished") or job.result.get("num_images") or 1)
                parts.append((stats["mean"], stats.get("std") or 0.0, n))
        if not parts:
            return {"mean": None, "std": None, "n": 0, "ci": None}
        n = sum(p[2] for p in parts)
        mean = sum(m * k for m, _, k in parts) / n
        second = sum((sd**2 + m**2) * k for m, sd, k in parts) / n
        ci = bootstrap_ci(pooled) if pooled else None
        return {"mean": mean, "std": math.sqrt(max(second - mean**2, 0.0)), "n": n, "ci": ci}


def configurations(jobs: Sequence[Job]) -> list[Config]:
    """The jobs grouped by the values of ``config_keys`` (seeds of one setting together), in job order."""
    keys = config_keys(jobs)
    groups: dict[tuple[str | None, ...], Config] = {}
    for job in jobs:
        values = {k: job.overrides.get(k) for k in keys}
        groups.setdefault(tuple(values.values()), Config(values, [])).jobs.append(job)
    return list(groups.values())


def best_config(configs: Sequence[Config], metric: str) -> Config | None:
    """The eligible configuration with the best pooled mean ``metric`` (lowest for LPIPS and residual)."""
    scored = [(c.stats(metric)["mean"], c) for c in configs if c.eligible]
    scored = [(value, c) for value, c in scored if value is not None]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda pair: pair[0])[1]


def table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``summary.csv``: one row per job (all numbers); ``best`` marks the jobs of the
    best configuration (all of its seeds)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    swept = swept_keys(jobs)
    keys = swept + [k for k in keys if k not in swept]
    stats: list[str] = []
    for block, prefix in (("metrics", ""), ("baseline", "baseline_")):
        names = dict.fromkeys(m for job in jobs for m in job.result.get(block, {}))
        stats += [f"{prefix}{m}_{s}" for m in names for s in ("mean", "std", "ci_low", "ci_high")]
    posterior = [f"{block}_{m}_{s}" for block, m in _posterior_columns(jobs) for s in ("mean", "ci_low", "ci_high")]
    stats += posterior
    best = best_config(configurations(jobs), optimized_metric(jobs))
    columns = ["job", "status", *keys, *stats, "nfe", "seconds_per_image", "num_finished", "best", "error"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status, **job.overrides}
        for block, prefix in (("metrics", ""), ("baseline", "baseline_")):
            for m, values in job.result.get(block, {}).items():
                row.update({f"{prefix}{m}_{s}": values.get(s) for s in ("mean", "std")})
                ci = values["ci"] if "ci" in values else bootstrap_ci(
                    [r.get(prefix + m) for r in job.result.get("per_image") or []])
                row.update({f"{prefix}{m}_ci_low": ci[0] if ci else None, f"{prefix}{m}_ci_high": ci[1] if ci else None})
        for block, m in _posterior_columns(jobs):
            values = (job.result.get(block) or {}).get(m) or {}
            ci = values.get("ci")
            row.update({f"{block}_{m}_mean": values.get("mean"), f"{block}_{m}_ci_low": ci[0] if ci else None,
                        f"{block}_{m}_ci_high": ci[1] if ci else None})
        row.update({k: job.result.get(k) for k in ("nfe", "seconds_per_image", "num_finished")})
        row["best"] = best is not None and job in best.jobs
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def _posterior_columns(jobs: Sequence[Job]) -> list[tuple[str, str]]:
    """(block, name) of the posterior numbers some job has (``num_samples`` > 1): the posterior mean's and the
    oracle's metrics, and the coverage of the 50 % and 90 % intervals."""
    out: dict[tuple[str, str], None] = {}
    for job in jobs:
        for block in ("posterior_mean", "oracle_best_of_k", "coverage"):
            for name, stats in (job.result.get(block) or {}).items():
                if isinstance(stats, dict) and "mean" in stats:
                    out[(block, name)] = None
    return list(out)


def _group_key(config: Config) -> tuple[Any, ...]:
    """What must agree for two configurations to be compared image by image: the task and the data settings."""
    result = next((job.result for job in config.jobs if job.result), {})
    data = {k: v for k, v in (result.get("settings_values") or {}).items() if k.startswith("data.")}
    return (result.get("task"), json.dumps(data, sort_keys=True, default=str))


@dataclass
class Paired:
    """One configuration against the best of its group, image by image."""

    config: Config
    key: str  # the per-image key compared (the optimized metric, or posterior_mean_<metric>)
    mean: float | None  # of the configuration, over the shared images
    diff: float | None  # mean of (this − best) over the shared images
    ci: list[float] | None
    n: int  # shared images

    @property
    def significant(self) -> bool | None:
        return None if self.ci is None else not (self.ci[0] <= 0 <= self.ci[1])


def paired_differences(jobs: Sequence[Job], key: str | None = None) -> list[tuple[Config, list[Paired]]]:
    """Per group of configurations on the same images (``_group_key``) with at least two: the best (eligible, by
    the pooled mean of ``key``, default ``optimized_metric``) and every configuration's paired difference to it
    over their shared image indices (per-image values averaged over seeds), with the bootstrap interval."""
    metric = optimized_metric(jobs)
    key = key or metric
    lower = metric in LOWER_IS_BETTER
    groups: dict[tuple[Any, ...], list[Config]] = {}
    for config in configurations(jobs):
        if any(job.status in ("ok", "diverged") for job in config.jobs):
            groups.setdefault(_group_key(config), []).append(config)
    out = []
    for configs in groups.values():
        values = {id(c): c.per_image(key) for c in configs}
        scored = [(sum(v.values()) / len(v), c) for c in configs if c.eligible and (v := values[id(c)])]
        if len(configs) < 2 or not scored:
            continue
        best = (min if lower else max)(scored, key=lambda pair: pair[0])[1]
        rows = []
        for config in configs:
            mine, ref = values[id(config)], values[id(best)]
            shared = sorted(set(mine or {}) & set(ref or {}))
            if not shared:
                rows.append(Paired(config, key, None, None, None, 0))
                continue
            diffs = [mine[i] - ref[i] for i in shared]
            rows.append(Paired(config, key, sum(mine[i] for i in shared) / len(shared), sum(diffs) / len(diffs),
                               bootstrap_ci(diffs) if config is not best else None, len(shared)))
        out.append((best, rows))
    return out


def _paired_lines(jobs: Sequence[Job]) -> list[str]:
    """The paired-comparison section of summary.md (empty when no two configurations share their images)."""
    metric = optimized_metric(jobs)
    keys = [metric]
    if any(f"posterior_mean_{metric}" in row for job in jobs for row in job.result.get("per_image") or []):
        keys.append(f"posterior_mean_{metric}")
    lines: list[str] = []
    names = config_keys(jobs)
    for key in keys:
        for best, rows in paired_differences(jobs, key):
            task = _group_key(best)[0]
            lines += [f"## Paired by image: {key}" + (f" ({task})" if task else ""), "",
                      f"Difference to the best configuration over the images both ran, with its 95 % bootstrap "
                      "interval over images; ≈ marks a difference whose interval includes 0 (not significant).", "",
                      "| | job | " + " | ".join([*names, key, "Δ to best", "95% CI", "n"]) + " |",
                      "|" + "---|" * (6 + len(names))]
            for p in rows:
                mark = "best" if p.config is best else "≈" if p.significant is False else ""
                ci = f"[{p.ci[0]:.3g}, {p.ci[1]:.3g}]" if p.ci else ""
                cells = [mark, p.config.name, *[_override(p.config.values.get(k)) for k in names], _fmt(p.mean),
                         "" if p.config is best else _fmt(p.diff), ci, str(p.n)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def config_table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per configuration, for W&B: swept values as numbers where they are, pooled mean/std/n of
    each metric and of the baseline, seeds, status, best."""
    configs = configurations(jobs)
    best = best_config(configs, optimized_metric(jobs))
    metrics = list(dict.fromkeys(m for job in jobs for m in job.result.get("metrics", {})))
    baseline = list(dict.fromkeys(m for job in jobs for m in job.result.get("baseline", {})))
    keys = config_keys(jobs)
    columns = ["jobs", "status", *keys, "seeds", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")],
               *[f"baseline_{m}_mean" for m in baseline], "n", "nfe", "seconds_per_image", "best"]
    rows = []
    for config in configs:
        row: dict[str, Any] = {"jobs": config.name, "status": config.status}
        row.update({k: typed(v) for k, v in config.values.items()})
        row["seeds"] = len(config.jobs)
        for m in metrics:
            stats = config.stats(m)
            row.update({f"{m}_mean": stats["mean"], f"{m}_std": stats["std"]})
            row["n"] = max(row.get("n", 0), stats["n"])
        row.update({f"baseline_{m}_mean": config.stats(m, "baseline")["mean"] for m in baseline})
        done = [job.result for job in config.jobs if job.result]
        row["nfe"] = done[0].get("nfe") if done else None
        times = [r["seconds_per_image"] for r in done if isinstance(r.get("seconds_per_image"), (int, float))]
        row["seconds_per_image"] = sum(times) / len(times) if times else None
        row["best"] = config is best
        rows.append(row)
    return columns, rows


def typed(value: str | None) -> Any:
    """An override value as W&B should chart it: a number or bool when it is one (``"0.3"`` → 0.3, ``"4"`` → 4,
    ``"False"`` → False), else the string."""
    if value is not None and value.lower() in ("true", "false"):
        return value.lower() == "true"
    number = as_number(value)
    if number is None or value is None:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


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


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""


def _posterior_cell(config: Config, block: str, name: str) -> str:
    """A posterior number of a configuration (one job: its mean [CI]; seeds: the mean of the jobs' means)."""
    found = [((job.result.get(block) or {}).get(name) or {}) for job in config.jobs if job.status in ("ok", "diverged")]
    means = [s["mean"] for s in found if s.get("mean") is not None]
    if not means:
        return ""
    if len(found) == 1:
        return f"{means[0]:.4g} {_ci(found[0].get('ci'))}".rstrip()
    return f"{sum(means) / len(means):.4g}"


def _mean_std(stats: dict[str, float | None]) -> str:
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None:
        return ""
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def markdown(jobs: Sequence[Job]) -> str:
    """The Markdown summary: constant overrides, then one row per configuration (swept keys → pooled mean ±
    std over seeds and images, n); ★ on the best configuration, ⚠ on diverged runs."""
    swept, keys = swept_keys(jobs), config_keys(jobs)
    constant = {k: v for k, v in jobs[0].overrides.items() if k not in swept}
    metric = optimized_metric(jobs)
    configs = configurations(jobs)
    best = best_config(configs, metric)
    metrics = list(dict.fromkeys(m for job in jobs for m in job.result.get("metrics", {})))
    seeds = [k for k in swept if k in REPEAT_KEYS]
    lines = [f"# Sweep {jobs[0].path.parent.name}", ""]
    if constant:
        lines += ["Fixed: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in constant.items()), ""]
    if seeds:
        lines += [f"Pooled over {', '.join(seeds)} (mean ± std over seeds and images; n images).", ""]
    posterior = [(b, m) for b, m in _posterior_columns(jobs) if b == "posterior_mean" or m == "coverage_90"]
    header = ["", "job", "status", *keys, *[c for m in metrics for c in (m, f"{m} 95% CI")],
              *[f"{b} {m}" for b, m in posterior], "n", "nfe", "s/image", "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in configs:
        stats = {m: config.stats(m) for m in metrics}
        first = next((job.result for job in config.jobs if job.result), {})
        errors = "; ".join(dict.fromkeys(job.error for job in config.jobs if job.error))
        diverged = any(job.status == "diverged" for job in config.jobs)
        row = [
            "★" if config is best else "⚠" if diverged else "", config.name, config.status,
            *[_override(config.values.get(k)) for k in keys],
            *[c for m in metrics for c in (_mean_std(stats[m]), _ci(stats[m].get("ci")))],
            *[_posterior_cell(config, b, m) for b, m in posterior],
            _fmt(max((s["n"] for s in stats.values()), default=0) or None), _fmt(first.get("nfe")),
            _fmt(first.get("seconds_per_image")), _fmt(errors or None),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if any(job.status == "diverged" for job in jobs):
        lines += ["⚠ diverged: the final data residual is far above the measurement's (see metrics.json "
                  "`warnings`); such runs are never best.", ""]
    direction = "lowest" if metric in LOWER_IS_BETTER else "highest"
    paired = _paired_lines(jobs)
    if best is None:
        lines.append(f"No configuration with every run ok has a {metric} value.")
    else:
        chosen = ", ".join(f"{k}={_override(best.values.get(k))}" for k in keys) or "all jobs alike"
        what = f"jobs {best.name}" if len(best.jobs) > 1 else f"job {best.name}"
        lines.append(f"★ best ({direction} mean {metric}): {what} ({chosen}): {best.stats(metric)['mean']:.4g}")
    if paired:
        lines += ["", *paired]
    return "\n".join(lines).rstrip("\n") + "\n"


def series(jobs: Sequence[Job], key: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """Points (value of ``key``, pooled mean ``metric``) of the configurations whose runs all finished ok,
    one series per combination of the other swept keys (seeds pooled)."""
    others = [k for k in config_keys(jobs) if k != key]
    out: dict[str, list[tuple[float, float]]] = {}
    for config in configurations(jobs):
        x, y = as_number(config.values.get(key)), config.stats(metric)["mean"]
        if not config.eligible or x is None or y is None:
            continue
        label = ", ".join(f"{k}={config.values.get(k)}" for k in others) or "all"
        out.setdefault(label, []).append((x, y))
    return {label: sorted(points) for label, points in out.items()}


def plot(jobs: Sequence[Job], key: str, path: Path) -> bool:
    """Write ``metric_vs_<key>.png`` (one panel per metric in PSNR/SSIM/LPIPS); False if nothing to plot."""
    panels = [(m, series(jobs, key, m)) for m in PLOTTED]
    panels = [(m, s) for m, s in panels if s]
    if not panels:
        return False
    from matplotlib.figure import Figure  # imported here: the CLI imports this module and must start fast

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
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return True


@dataclass
class Report:
    """What ``write_report`` wrote and what the W&B report run logs."""

    sweep_dir: Path
    files: list[Path]
    columns: list[str]  # of the configuration table (one row per configuration, seeds pooled)
    rows: list[dict[str, Any]]
    metric: str  # optimized_metric
    keys: list[str]  # the configuration keys (swept, seed excluded)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((row for row in self.rows if row["best"]), None)


def write_report(sweep_dir: Path) -> Report:
    """Write summary.csv (one row per job), summary.md (one row per configuration) and the plots."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    columns, rows = table(jobs)
    csv_path = sweep_dir / "summary.csv"
    with replacing(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path = sweep_dir / "summary.md"
    write_text(md_path, markdown(jobs))
    files = [csv_path, md_path]
    for key in config_keys(jobs):
        png = sweep_dir / f"metric_vs_{key.replace('/', '_')}.png"
        if plot(jobs, key, png):
            files.append(png)
    config_columns, config_rows = config_table(jobs)
    return Report(sweep_dir, files, config_columns, config_rows, optimized_metric(jobs), config_keys(jobs))


def headline(report: Report, max_rows: int = 10) -> str:
    """The top of ``summary.md`` for the console: its first ``max_rows`` table rows and the best line."""
    lines = (report.sweep_dir / "summary.md").read_text().splitlines()
    paired = next((i for i, line in enumerate(lines) if line.startswith("## Paired by image")), len(lines))
    lines = lines[:paired]  # the main table and its notes (the paired tables stay in summary.md)
    table_rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    shown = lines[: table_rows[min(len(table_rows), max_rows + 2) - 1] + 1] if table_rows else lines
    if len(table_rows) > max_rows + 2:
        shown.append(f"| ... {len(table_rows) - max_rows - 2} more rows in {report.sweep_dir / 'summary.md'} |")
        shown += [lines[i] for i in table_rows[max_rows + 2 :] if lines[i].startswith("| ★")]
    shown += [line for line in lines[len(shown):] if line.startswith(("★", "⚠", "No configuration"))]
    return "\n".join(shown)


def main(argv: Sequence[str] | None = None) -> Report:
    """Write the report of a sweep directory and print its files and headline (to log it to W&B as well:
    ``python -m diffexp.tracking.wandb``)."""
    parser = argparse.ArgumentParser(prog="python -m diffexp.tracking.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir)
    except NotASweepError as err:
        parser.exit(2, f"{parser.prog}: {err}\n")
    for path in report.files:
        print(path)
    print(headline(report))
    return report


if __name__ == "__main__":
    main()
