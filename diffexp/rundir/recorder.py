"""The output contract of a run, written into Hydra's output directory as the run goes.

``metrics.json`` (rewritten after every batch, atomically), ``images/<index>.png`` (output),
``images/<index>_measurement.png`` and ``images/<index>_truth.png`` (inverse tasks),
``measurements/<index>.pt`` (raw y and the operator's per-image parameters) and ``grid.png``. Every file is
written atomically (``diffexp.rundir.files.atomic_write``): a crash or a full disk never leaves a partial file.
A write that fails (disk full, the directory deleted mid-run) ends the run with one ``RunDirError``.

With ``num_samples=K`` > 1 ``diffexp.rundir.posterior.PosteriorRecorder`` records each posterior sample and each
image's posterior; with K = 1 (this class) the files are those of a run before ``num_samples`` existed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from diffexp.data.ranges import from_unit
from diffexp.errors import ConfigError, RunDirError
from diffexp.rundir.files import (
    IMAGE_SUFFIXES, METRICS, atomic_write, image_name, measurement_name, metrics_problems, write_json,
)
from diffexp.rundir.images import comparison_grid, make_grid, save_png
from diffexp.rundir.runconfig import RUN_CONFIG, write_run_config

__all__ = ["METRICS", "RESULT_SETTINGS", "Recorder", "settings_diff", "settings_hash", "settings_values", "summarize"]
log = logging.getLogger(__name__)
# What decides an image's result: resume refuses an output dir written with other values of these.
RESULT_SETTINGS = ("model", "sampler", "task", "data", "metrics", "seed", "runtime.dtype")


def summarize_ci(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, dict[str, Any]]:
    """``summarize`` with the 95 % bootstrap interval over images of each mean (``ci``; ``num_samples`` > 1)."""
    from diffexp.evaluation.posterior import bootstrap_ci

    return {name: {**block, "ci": bootstrap_ci([r.get(prefix + name) for r in rows]) if block["mean"] is not None
                   else None}
            for name, block in summarize(rows, prefix).items()}


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
    """Integers as floats where the float is exact (``step_size=3`` and ``3.0`` are the same setting), recursively:
    for the settings hash only. An integer no float holds exactly (a seed beyond 2**53) stays an integer."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            as_float = float(value)
        except OverflowError:
            return value
        return as_float if as_float == value else value  # int == float is exact in Python: 2**53 + 1 != 2.0**53
    return value


def _fingerprint(value: Any) -> str:
    """The canonical JSON text of a setting's value (or of all of them), for the settings hash."""
    return json.dumps(_canonical(value), sort_keys=True, default=str)


def _same(a: Any, b: Any) -> bool:
    """Whether two setting values are the same: exactly, except that an integer equals a float of exactly its
    value (``3 == 3.0``; an older metrics.json stored ``200`` as ``200.0``); booleans only equal booleans."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, numbers) and isinstance(b, numbers)):
        return type(a) is type(b) and a == b
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


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
    """Fingerprint of the ``RESULT_SETTINGS`` (not num_images, batch_size, device or logger); integers count as
    floats where that is exact, so ``step_size=3`` and ``3.0`` hash alike. Resume compares the values themselves
    (``settings_diff``); the hash is only a record."""
    return hashlib.sha256(_fingerprint(settings_values(cfg)).encode()).hexdigest()[:16]


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["sampler.step_size: 5.0 → 3.0", ...]`` for every key whose value differs (or exists on one side);
    values are compared exactly (``_same``: ``3`` equals ``3.0``, as an older ``metrics.json`` stored ``200`` as
    ``200.0``, but ``2**53 + 1`` is not ``2**53``)."""
    missing = "(unset)"
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {json.dumps(old.get(k, missing), default=str)} → {json.dumps(new.get(k, missing), default=str)}"
        for k in keys
        if not _same(old.get(k, missing), new.get(k, missing))
    ]


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no Inf/NaN: a non-finite value (PSNR of an exact match is +Inf) is stored as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _load_png(path: Path, channels: int) -> Tensor:
    with Image.open(path) as img:
        arr = torch.from_numpy(np.asarray(img.convert("L" if channels == 1 else "RGB")).copy()).float() / 255
    return from_unit(arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1))


def _damaged_png(path: Path, image_shape: tuple[int, ...] | None) -> str | None:
    """Why the PNG at ``path`` cannot be used again (missing, empty, corrupt, wrong size), or None."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a corrupt file
        return f"unreadable ({type(err).__name__})"
    if image_shape is not None and size != (image_shape[-1], image_shape[-2]):
        return f"{size[0]}x{size[1]} pixels, not {image_shape[-1]}x{image_shape[-2]}"
    return None


def _damaged_measurement(path: Path, keys: tuple[str, ...] = ("y",)) -> str | None:
    """Why ``measurements/<index>.pt`` (or a sample's or posterior's record, holding ``keys``) cannot be used
    again, or None."""
    if not path.is_file():
        return "missing"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        return f"unreadable ({type(err).__name__})"
    ok = isinstance(raw, dict) and all(isinstance(raw.get(k), Tensor) for k in keys)
    return None if ok else "not a measurement record"


class Recorder:
    """Collects per-image results and keeps the output directory complete after every batch.

    Args:
        out_dir: the job's Hydra output directory.
        header: the fixed fields of ``metrics.json`` (task, sampler, model, num_images, nfe).
        has_truth: whether the task has ground truth (inverse problems).
        previous: the ``metrics.json`` content of an earlier run to continue (``resume=true``), checked
            against ``header`` and the files on disk.
        image_shape: (C, H, W) of the images, to check the size of the PNGs kept on resume (None: not checked).
    """

    num_samples = 1  # posterior samples per image (``PosteriorRecorder``: K > 1)

    def __init__(
        self,
        out_dir: Path,
        header: dict[str, Any],
        has_truth: bool,
        previous: dict[str, Any] | None = None,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.images = self.out_dir / "images"
        self.measurements = self.out_dir / "measurements"
        self.header = header
        self.has_truth = has_truth
        self.image_shape = image_shape
        self.rows: dict[int, dict[str, Any]] = {}
        self.seconds = 0.0
        self.failure: RunDirError | None = None  # the write error that ended the run, reported once
        with self._writing(self.images):
            self.images.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            self._resume(previous)

    def _resume(self, previous: dict[str, Any]) -> None:
        """Keep the earlier rows whose files are all on disk and readable (the others are sampled again: same
        seed, same result); refuse results written with other settings, naming each setting that differs, or
        holding more images than ``num_images``, and a ``metrics.json`` of the wrong shape."""
        path = self.out_dir / "metrics.json"
        shape = metrics_problems(previous, need_rows=True)
        if shape:
            raise ConfigError(
                [f"{path} is damaged ({'; '.join(shape[:3])}); it cannot be resumed: pass overwrite=true to start "
                 "this directory afresh"],
                title="resume=true refused",
            )
        problems = [
            f"{key}: {previous.get(key)!r} → {self.header.get(key)!r}"
            for key in ("task", "sampler", "model")
            if previous.get(key) != self.header.get(key)
        ]
        old = previous.get("settings_values")
        if not problems and isinstance(old, dict):
            problems = settings_diff(old, self.header["settings_values"])
        elif not problems and previous.get("settings") != self.header.get("settings"):
            problems = [f"one of {', '.join(RESULT_SETTINGS)} differs"]
        if problems:
            raise ConfigError(
                [f"{path} was written with other settings; resume with the original ones or use a new output dir:"]
                + problems,
                title="resume=true refused",
            )
        if self.num_samples > 1 or int(previous.get("num_samples") or 1) > 1:
            self._resume_samples(previous, path)
            return
        rows = previous["per_image"]
        num_images = self.header.get("num_images", math.inf)
        beyond = sorted(row["index"] for row in rows if row["index"] >= num_images)
        if beyond:
            raise ConfigError(
                [f"{path} holds {len(rows)} finished images, up to index {beyond[-1]}, but num_images={num_images}: "
                 f"resume with num_images>={beyond[-1] + 1} (finished images are never dropped), or choose another "
                 "output dir"],
                title="resume=true refused",
            )
        for row in rows:
            index = row["index"]
            damaged = self._damaged(index)
            if damaged:
                log.warning("resume: %s; image %d is sampled again", ", ".join(damaged), index)
            else:
                self.rows[index] = row
        seconds = float(previous.get("seconds") or 0.0)
        self.seconds = seconds * len(self.rows) / len(rows) if rows else 0.0  # the time of the rows kept

    def _resume_samples(self, previous: dict[str, Any], path: Path) -> None:
        """A run of several samples per image is resumed by ``PosteriorRecorder`` only (``num_samples`` > 1)."""
        raise ConfigError([f"{path} holds a run with num_samples={previous.get('num_samples')}, not 1: a run with "
                           "num_samples=1 names its outputs images/<i>.png, one with more images/<i>_s<k>.png; resume "
                           "with its num_samples or more, or choose another output dir"], title="resume=true refused")

    def _damaged(self, index: int) -> list[str]:
        """``["<path> is missing", ...]``: the recorded files of image ``index`` that cannot be used again."""
        suffixes = IMAGE_SUFFIXES if self.has_truth else ("",)
        found = [(self.images / image_name(index, s), _damaged_png(self.images / image_name(index, s),
                                                                    self.image_shape)) for s in suffixes]
        if self.has_truth:
            pt = self.measurements / measurement_name(index)
            found.append((pt, _damaged_measurement(pt)))
        return [f"{path} is {why}" for path, why in found if why is not None]

    @property
    def done(self) -> set[int]:
        return set(self.rows)

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn an ``OSError`` while writing ``path`` into one ``RunDirError`` that says what happened."""
        try:
            yield
        except OSError as err:
            self.failure = self._write_error(path, err)
            raise self.failure from err

    def _write_error(self, path: Path, err: OSError) -> RunDirError:
        where = "choose another hydra.run.dir (hydra.sweep.dir in a multirun)"
        if not self.out_dir.is_dir():
            problem = (f"{self.out_dir} was deleted (or moved) while the run was writing it; its results are gone: "
                       f"run again, or {where}")
        elif not path.parent.is_dir():
            problem = f"{path.parent} was deleted while the run was writing it: run again with overwrite=true"
        elif err.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = (f"{path}: no space left on device (disk or quota full): free some space and continue with "
                       f"resume=true (the images recorded so far are kept), or {where}")
        else:
            problem = f"{path} cannot be written: {err.strerror or err}"
        return RunDirError([problem], title="the run directory could not be written")

    def _save(self, path: Path, fill: Callable[[IO[bytes]], Any]) -> None:
        with self._writing(path):
            atomic_write(path, fill)

    def start(self, cfg: Any = None) -> dict[str, Any]:
        """Before the first image: record ``cfg`` in ``run_config.yaml`` (``diffexp.rundir.runconfig``; not without
        one) and write ``metrics.json`` (status ``running``), so that it always names every index this run may
        write (``num_images``): ``overwrite=true`` then knows the files as this run's."""
        if cfg is not None:
            path = self.out_dir / RUN_CONFIG
            with self._writing(path):
                write_run_config(self.out_dir, cfg)
        return self.write("running")

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
            images = [(output, "")]
            images += [(truth, "_truth")] if truth is not None else []
            images += [(measurement, "_measurement")] if measurement is not None else []
            for x, suffix in images:
                path = self.images / image_name(index, suffix)
                with self._writing(path):
                    save_png(x[j], path)
            if raw is not None:
                with self._writing(self.measurements):
                    self.measurements.mkdir(exist_ok=True)
                self._save(self.measurements / measurement_name(index), lambda f, r=raw[j]: torch.save(r, f))
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
        path = self.out_dir / "metrics.json"
        with self._writing(path):
            write_json(path, result)
        return result

    def finish(self, status: str, error: str | None = None, *, failing: bool = False) -> dict[str, Any] | None:
        """Write the final metrics.json and grid.png (from the saved PNGs, so resumed runs are whole).

        ``failing``: the run is already ending with an error; a ``RunDirError`` here is then logged (once: not
        when it repeats the run's own, e.g. the deleted directory), not raised, so that the run's error is the
        one reported. Returns None when ``metrics.json`` could not be written."""
        earlier = str(self.failure) if self.failure is not None else None
        path = self.out_dir / "metrics.json"
        try:
            result = self.write(status, error)
        except RunDirError as err:
            if not failing:
                raise
            if self.out_dir.is_dir() or earlier != str(err):  # a deleted directory is reported once
                still = "it still says status 'running'" if path.is_file() else "there is none"
                log.error("%s could not be updated with the run's end (%s): %s", path, err.problems[0], still)
            return None
        try:
            self._write_grid()
        except RunDirError as err:
            if not failing:
                raise
            if earlier != str(err):
                log.error("%s", err)
        return result

    def _write_grid(self) -> None:
        indices = sorted(self.rows)
        if not indices:
            return
        channels = int(self.header.get("channels", 3))

        def load(suffix: str) -> Tensor:
            tiles = []
            for i in indices:
                path = self.images / image_name(i, suffix)
                with self._writing(path):
                    tiles.append(_load_png(path, channels))
            return torch.stack(tiles)

        grid = self._grid(indices, load)
        path = self.out_dir / "grid.png"
        with self._writing(path):
            save_png(grid, path)

    def _grid(self, indices: list[int], load: Callable[[str], Tensor]) -> Image.Image:
        """truth | measurement | reconstruction per image (inverse tasks), else the outputs in a square."""
        if self.has_truth:
            return comparison_grid([load("_truth"), load("_measurement"), load("")])
        return make_grid(load(""), nrow=math.ceil(math.sqrt(len(indices))))
