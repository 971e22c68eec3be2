"""The output contract of a run, written into Hydra's output directory as the run goes.

``metrics.json`` (rewritten after every batch, atomically), ``images/<index>.png`` (output),
``images/<index>_measurement.png`` and ``images/<index>_truth.png`` (inverse tasks),
``measurements/<index>.pt`` (raw y and the operator's per-image parameters) and ``grid.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from diffexp.data import from_unit
from diffexp.images import comparison_grid, make_grid, save_png

METRICS = ("psnr", "ssim", "lpips", "residual")
# What decides an image's result: resume refuses an output dir written with other values of these.
RESULT_SETTINGS = ("model", "sampler", "task", "data", "metrics", "seed", "runtime.dtype")


def image_name(index: int, suffix: str = "") -> str:
    return f"{index:05d}{suffix}.png"


def summarize(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, dict[str, float | None]]:
    """Mean and (population) std of each metric over the rows; None where any value is missing."""
    out: dict[str, dict[str, float | None]] = {}
    for name in METRICS:
        values = [r.get(prefix + name) for r in rows]
        if not values or all(v is None for v in values) and (prefix + name) not in rows[0]:
            continue
        if any(v is None or not math.isfinite(v) for v in values):
            out[name] = {"mean": None, "std": None}
        else:
            out[name] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def _canonical(value: Any) -> Any:
    """Numbers as floats (``step_size=3`` and ``3.0`` are the same setting), recursively."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def settings_hash(cfg: DictConfig) -> str:
    """Fingerprint of the ``RESULT_SETTINGS`` (not num_images, batch_size, device or logger)."""
    picked = {}
    for key in RESULT_SETTINGS:
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
        picked[key] = _canonical(value)
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no Inf/NaN: a non-finite value (PSNR of an exact match is +Inf) is stored as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)


def _load_png(path: Path, channels: int) -> Tensor:
    with Image.open(path) as img:
        arr = torch.from_numpy(np.asarray(img.convert("L" if channels == 1 else "RGB")).copy()).float() / 255
    return from_unit(arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1))


class Recorder:
    """Collects per-image results and keeps the output directory complete after every batch.

    Args:
        out_dir: the job's Hydra output directory.
        header: the fixed fields of ``metrics.json`` (task, sampler, model, num_images, nfe).
        has_truth: whether the task has ground truth (inverse problems).
        resume: keep the finished images of a previous run in ``out_dir``.
    """

    def __init__(self, out_dir: Path, header: dict[str, Any], has_truth: bool, resume: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.images = self.out_dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.has_truth = has_truth
        self.rows: dict[int, dict[str, Any]] = {}
        self.seconds = 0.0
        path = self.out_dir / "metrics.json"
        if resume and path.is_file():
            previous = json.loads(path.read_text())
            for key in ("task", "sampler", "model"):
                if previous.get(key) != header.get(key):
                    raise ValueError(
                        f"resume=true: {path} was written for {key}={previous.get(key)!r}, not {header.get(key)!r}"
                    )
            if previous.get("settings") != header.get("settings"):
                raise ValueError(
                    f"resume=true: {path} was written with other settings (one of {', '.join(RESULT_SETTINGS)} "
                    "differs); resume with the original settings or use a new output dir"
                )
            num_images = header.get("num_images", math.inf)
            self.rows = {r["index"]: r for r in previous.get("per_image", []) if r["index"] < num_images}
            self.seconds = float(previous.get("seconds") or 0.0)

    @property
    def done(self) -> set[int]:
        return set(self.rows)

    def add(
        self,
        indices: list[int],
        output: Tensor,
        rows: list[dict[str, Any]],
        seconds: float,
        truth: Tensor | None = None,
        measurement: Tensor | None = None,
        raw: list[dict[str, Tensor]] | None = None,
    ) -> None:
        """Save a finished batch (images, raw measurements, per-image metrics) and rewrite metrics.json."""
        for j, index in enumerate(indices):
            save_png(output[j], self.images / image_name(index))
            if truth is not None:
                save_png(truth[j], self.images / image_name(index, "_truth"))
            if measurement is not None:
                save_png(measurement[j], self.images / image_name(index, "_measurement"))
            if raw is not None:
                (self.out_dir / "measurements").mkdir(exist_ok=True)
                torch.save(raw[j], self.out_dir / "measurements" / f"{index:05d}.pt")
            self.rows[index] = {"index": index, **_finite_or_none(rows[j])}
        self.seconds += seconds
        self.write("running")

    def result(self, status: str, error: str | None = None) -> dict[str, Any]:
        rows = [self.rows[i] for i in sorted(self.rows)]
        return {
            "status": status,
            "error": error,
            **self.header,
            "num_finished": len(rows),
            "seconds": self.seconds,
            "seconds_per_image": self.seconds / len(rows) if rows else None,
            "metrics": summarize(rows) if self.has_truth and rows else {},
            "baseline": summarize(rows, "baseline_") if self.has_truth and rows else {},
            "per_image": rows,
        }

    def write(self, status: str, error: str | None = None) -> dict[str, Any]:
        result = self.result(status, error)
        write_json(self.out_dir / "metrics.json", result)
        return result

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Write the final metrics.json and grid.png (from the saved PNGs, so resumed runs are whole)."""
        result = self.write(status, error)
        indices = sorted(self.rows)
        if indices:
            channels = int(self.header.get("channels", 3))
            load = lambda suffix: torch.stack(  # noqa: E731
                [_load_png(self.images / image_name(i, suffix), channels) for i in indices]
            )
            if self.has_truth:
                grid = comparison_grid([load("_truth"), load("_measurement"), load("")])
            else:
                grid = make_grid(load(""), nrow=math.ceil(math.sqrt(len(indices))))
            grid.save(self.out_dir / "grid.png")
        return result
