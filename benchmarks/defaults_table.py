"""README table from a ``make table`` sweep: ``python -m benchmarks.defaults_table outputs/table``.

One row per task × sampler (each with its default settings): PSNR, SSIM, LPIPS, seconds per image,
and the PSNR of the measurement-only baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from diffexp.report import load_jobs


def _cell(stats: dict | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def table(sweep_dir: Path) -> str:
    lines = [
        "| task | sampler | step size | PSNR (dB) | SSIM | LPIPS | s/image | baseline PSNR (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job in load_jobs(sweep_dir):
        r = job.result
        if job.status != "ok":
            lines.append(f"| {job.overrides.get('task')} | {job.overrides.get('sampler')} | | failed: {job.error} | | | | |")
            continue
        config = OmegaConf.load(job.path / ".hydra" / "config.yaml")
        step = OmegaConf.select(config, "sampler.step_size", default="")  # resolves the per-task default
        m, b = r["metrics"], r["baseline"]
        lines.append(
            f"| {r['task']} | {r['sampler']} | {step} | {_cell(m.get('psnr'), 2)} | {_cell(m.get('ssim'), 3)} | "
            f"{_cell(m.get('lpips'), 3)} | {r['seconds_per_image']:.2f} | {_cell(b.get('psnr'), 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
