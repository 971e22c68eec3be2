"""README table from a ``make table`` sweep: ``python -m benchmarks.defaults_table outputs/table``.

One row per task × sampler (each with its default settings): its main settings, PSNR, SSIM, LPIPS,
network calls per image (NFE), seconds per image, and the PSNR of the measurement-only baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from diffexp.tracking.report import load_jobs


def _cell(stats: dict | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


KNOBS = ("step_size", "eta", "lam", "zeta", "lr", "tau", "ode_steps", "corrector_steps", "corrector_size")


def settings(sampler: dict) -> str:
    """The sampler's hyperparameters that set its strength (the per-task values of conf/tuned/ included)."""
    return ", ".join(f"{k} {sampler[k]:g}" for k in KNOBS if isinstance(sampler.get(k), (int, float)))


def table(sweep_dir: Path) -> str:
    lines = [
        "| task | sampler | settings | PSNR (dB) | SSIM | LPIPS | NFE | s/image | baseline PSNR (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for job in load_jobs(sweep_dir):
        r = job.result
        if job.status != "ok":
            lines.append(f"| {job.overrides.get('task')} | {job.overrides.get('sampler')} | | {job.status}: {job.error} | | | | | |")
            continue
        config = OmegaConf.load(job.path / ".hydra" / "config.yaml")
        sampler = OmegaConf.to_container(config.sampler, resolve=True)  # the tuned values are already in it
        m, b = r["metrics"], r["baseline"]
        lines.append(
            f"| {r['task']} | {r['sampler']} | {settings(sampler)} | {_cell(m.get('psnr'), 2)} | "
            f"{_cell(m.get('ssim'), 3)} | {_cell(m.get('lpips'), 3)} | {r['nfe']} | "
            f"{r['seconds_per_image']:.2f} | {_cell(b.get('psnr'), 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
