"""The output contract of a run, written into Hydra's output directory as the run goes.

``metrics.json`` (rewritten after every batch, atomically), ``images/<index>.png`` (output),
``images/<index>_measurement.png`` and ``images/<index>_truth.png`` (inverse tasks),
``measurements/<index>.pt`` (raw y and the operator's per-image parameters) and ``grid.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from diffexp.data.ranges import from_unit
from diffexp.rundir.files import image_name, write_json
from diffexp.errors import ConfigError
from diffexp.rundir.images import comparison_grid, make_grid, save_png

log = logging.getLogger(__name__)
METRICS = ("psnr", "ssim", "lpips", "residual")
# What decides an image's result: resume refuses an output dir written with other values of these.
RESULT_SETTINGS = ("model", "sampler", "task", "data", "metrics", "seed", "runtime.dtype")


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
    """Numbers as floats (``step_size=3`` and ``3.0`` are the same setting), recursively: for comparisons only."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _fingerprint(value: Any) -> str:
    """The canonical JSON text of a setting's value (or of all of them): equal exactly when the settings are."""
    return json.dumps(_canonical(value), sort_keys=True, default=str)


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def settings_values(cfg: DictConfig) -> dict[str, Any]:
    """The ``RESULT_SETTINGS`` resolved and flattened to dotted keys, with their types (``sampler.num_steps: 200``,
    ``sampler.step_size: 5.0``)."""
    picked: dict[str, Any] = {}
    for key in RESULT_SETTINGS:
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
        picked.update(_flatten(value, key))
    return picked


def settings_hash(cfg: DictConfig) -> str:
    """Fingerprint of the ``RESULT_SETTINGS`` (not num_images, batch_size, device or logger); numbers count as
    floats, so ``step_size=3`` and ``3.0`` hash alike."""
    return hashlib.sha256(_fingerprint(settings_values(cfg)).encode()).hexdigest()[:16]


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["sampler.step_size: 5.0 → 3.0", ...]`` for every key whose value differs (or exists on one side);
    numbers are compared as in ``settings_hash`` (an older ``metrics.json`` stored ``200`` as ``200.0``)."""
    missing = "(unset)"
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {json.dumps(old.get(k, missing), default=str)} → {json.dumps(new.get(k, missing), default=str)}"
        for k in keys
        if _fingerprint(old.get(k, missing)) != _fingerprint(new.get(k, missing))
    ]


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no Inf/NaN: a non-finite value (PSNR of an exact match is +Inf) is stored as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


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
        previous: the ``metrics.json`` content of an earlier run to continue (``resume=true``), checked
            against ``header`` and the images on disk.
    """

    def __init__(
        self,
        out_dir: Path,
        header: dict[str, Any],
        has_truth: bool,
        previous: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.images = self.out_dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.has_truth = has_truth
        self.rows: dict[int, dict[str, Any]] = {}
        self.seconds = 0.0
        if previous is not None:
            self._resume(previous)

    def _resume(self, previous: dict[str, Any]) -> None:
        """Keep the earlier rows whose images are all on disk (the others are sampled again: same seed, same
        result); refuse results written with other settings, naming each setting that differs."""
        path = self.out_dir / "metrics.json"
        problems = [
            f"{key}: {previous.get(key)!r} → {self.header.get(key)!r}"
            for key in ("task", "sampler", "model")
            if previous.get(key) != self.header.get(key)
        ]
        if not problems and previous.get("settings") != self.header.get("settings"):
            old = previous.get("settings_values")
            problems = (
                settings_diff(old, self.header["settings_values"])
                if isinstance(old, dict)
                else [f"one of {', '.join(RESULT_SETTINGS)} differs"]
            )
        if problems:
            raise ConfigError(
                [f"{path} was written with other settings; resume with the original ones or use a new output dir:"]
                + problems,
                title="resume=true refused",
            )
        num_images = self.header.get("num_images", math.inf)
        suffixes = ("", "_truth", "_measurement") if self.has_truth else ("",)
        for row in previous["per_image"]:
            index = row.get("index")
            if not isinstance(index, int) or index >= num_images:
                continue
            lost = [image_name(index, s) for s in suffixes if not (self.images / image_name(index, s)).is_file()]
            if lost:
                log.warning("resume: %s missing in %s; image %d is sampled again", ", ".join(lost), self.images, index)
            else:
                self.rows[index] = row
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
        diverged = [r["index"] for r in rows if r.get("diverged")]
        warnings = [
            f"image {i}: final residual {self.rows[i]['residual']:.4g} is far above the measurement's "
            f"(limit {self.rows[i]['residual_limit']:.4g}): the output does not fit its measurement (a diverging "
            "sampler: step size too large? too few steps, or an untrained model)"
            for i in diverged
        ]
        if status == "ok" and diverged:
            status = "diverged"
        return {
            "status": status,
            "error": error,
            "warnings": warnings,
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
