"""The run directory of ``num_samples=K`` > 1 posterior samples per measurement (``PosteriorRecorder``).

Every posterior sample is recorded on its own (``add_samples``): ``images/<i>_s<k>.png``, its raw values in
``measurements/<i>_s<k>.pt`` and a ``per_sample`` row of ``metrics.json``; every image once all its K samples are
(``add_image``): ``images/<i>_mean.png``, ``images/<i>_std.png`` (a heat map with a colour bar),
``measurements/<i>_posterior.pt`` and its ``per_image`` row. ``resume=true`` keeps every (image, sample) whose files
are intact (and the image rows of the same K). ``metrics.json`` adds the blocks of
``diffexp.evaluation.posterior.aggregate`` and a 95 % bootstrap ``ci`` to every mean; ``grid.png`` has one row per
image (truth | measurement | samples | mean | std) and ``coverage.png`` plots the coverage curve.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffexp.errors import ConfigError
from diffexp.rundir.files import METRICS, POSTERIOR_RECORD, image_name, measurement_name, sample_suffix
from diffexp.rundir.images import comparison_grid, save_coverage_plot, save_png, save_std_heatmap, std_tile
from diffexp.rundir.recorder import Recorder, _damaged_measurement, _damaged_png, _finite_or_none, summarize_ci

log = logging.getLogger(__name__)
SAMPLE_KEYS = ("x",)  # measurements/<i>_s<k>.pt: the sample in [-1, 1], float32
POSTERIOR_KEYS = ("mean", "std")  # measurements/<i>_posterior.pt: per-pixel mean and std, [-1, 1] units


class PosteriorRecorder(Recorder):
    """``Recorder`` for K > 1 samples per image (module docstring); ``num_samples`` is K."""

    def __init__(self, out_dir: Path, header: dict[str, Any], has_truth: bool, previous: dict[str, Any] | None = None,
                 image_shape: tuple[int, ...] | None = None, *, num_samples: int) -> None:
        if num_samples < 2:
            raise ValueError(f"num_samples={num_samples}: a PosteriorRecorder records 2 or more samples per image")
        self.num_samples = num_samples
        self.sample_rows: dict[tuple[int, int], dict[str, Any]] = {}  # per (image, sample)
        self._values: dict[tuple[int, int], Tensor] = {}  # this run's samples, until their image's posterior is
        super().__init__(out_dir, header, has_truth, previous, image_shape)

    def _resume_samples(self, previous: dict[str, Any], path: Path) -> None:
        """Resume with ``num_samples`` > 1: keep every (image, sample) whose files are intact and every image row
        whose K samples and files are; refuse a change of K from or to 1 and a smaller K."""
        before, now = int(previous.get("num_samples") or 1), self.num_samples
        if before == 1 or now == 1 or now < before:
            why = ("finished samples are never dropped: resume with num_samples>=" + str(before) if now < before
                   else "a run with num_samples=1 names its outputs images/<i>.png, one with more images/<i>_s<k>.png")
            raise ConfigError([f"{path} holds a run with num_samples={before}, not {now}: {why}; or choose another "
                               "output dir"], title="resume=true refused")
        samples = previous.get("per_sample") or []
        num_images = self.header.get("num_images", math.inf)
        beyond = sorted({row["index"] for row in [*samples, *previous["per_image"]] if row["index"] >= num_images})
        if beyond:
            raise ConfigError(
                [f"{path} holds samples of images up to index {beyond[-1]}, but num_images={num_images}: resume with "
                 f"num_images>={beyond[-1] + 1} (finished images are never dropped), or choose another output dir"],
                title="resume=true refused",
            )
        for row in samples:
            index, sample = row["index"], row["sample"]
            damaged = self._damaged_sample(index, sample)
            if damaged:
                log.warning("resume: %s; sample %d of image %d is drawn again", ", ".join(damaged), sample, index)
            else:
                self.sample_rows[(index, sample)] = row
        for row in previous["per_image"] if before == now else []:
            index = row["index"]
            complete = all((index, k) in self.sample_rows for k in range(now))
            damaged = self._damaged_posterior(index)
            if complete and not damaged:
                self.rows[index] = row
            elif complete:
                log.warning("resume: %s; the posterior of image %d is computed again", ", ".join(damaged), index)
        seconds = float(previous.get("seconds") or 0.0)
        self.seconds = seconds * len(self.sample_rows) / len(samples) if samples else 0.0

    def _damaged_sample(self, index: int, sample: int) -> list[str]:
        """The recorded files of sample ``sample`` of image ``index`` (and of its measurement) that cannot be used."""
        found = [(self.images / image_name(index, s), _damaged_png(self.images / image_name(index, s), self.image_shape))
                 for s in (sample_suffix(sample), "_truth", "_measurement")]
        for name, keys in ((measurement_name(index, sample_suffix(sample)), SAMPLE_KEYS),
                           (measurement_name(index), ("y",))):
            found.append((self.measurements / name, _damaged_measurement(self.measurements / name, keys)))
        return [f"{path} is {why}" for path, why in found if why is not None]

    def _damaged_posterior(self, index: int) -> list[str]:
        """The recorded posterior files of image ``index`` that cannot be used again."""
        found = [(self.images / image_name(index, "_mean"),
                  _damaged_png(self.images / image_name(index, "_mean"), self.image_shape)),
                 (self.images / image_name(index, "_std"), _damaged_png(self.images / image_name(index, "_std"), None))]
        pt = self.measurements / measurement_name(index, POSTERIOR_RECORD)
        found.append((pt, _damaged_measurement(pt, POSTERIOR_KEYS)))
        return [f"{path} is {why}" for path, why in found if why is not None]

    @property
    def done_samples(self) -> set[tuple[int, int]]:
        """The (image, sample) pairs recorded (``num_samples`` > 1)."""
        return set(self.sample_rows)

    def pending(self) -> list[int]:
        """The images whose K samples are all recorded but whose posterior is not yet (``add_image``)."""
        images = {i for i, _ in self.sample_rows}
        return sorted(i for i in images if i not in self.rows
                      and all((i, k) in self.sample_rows for k in range(self.num_samples)))

    def samples_of(self, index: int) -> Tensor:
        """The K recorded samples of image ``index`` (K, C, H, W) in [-1, 1], float32 on the CPU: this run's from
        memory, a resumed run's from ``measurements/<i>_s<k>.pt``."""
        out = []
        for k in range(self.num_samples):
            value = self._values.get((index, k))
            if value is None:
                path = self.measurements / measurement_name(index, sample_suffix(k))
                with self._writing(path):
                    value = torch.load(path, map_location="cpu", weights_only=True)["x"]
            out.append(value.float())
        return torch.stack(out)

    def add_samples(
        self,
        pairs: list[tuple[int, int]],
        output: Tensor,
        rows: list[dict[str, Any]],
        seconds: float,
        *,
        truth: Tensor,
        measurement: Tensor,
        raw: list[dict[str, Tensor]],
        images: list[int],
    ) -> None:
        """Save a finished batch of posterior samples (``num_samples`` > 1): per pair its PNG, raw values and row;
        per distinct image (``images``, the rows of ``truth``, ``measurement`` and ``raw``) its truth, measurement
        and raw measurement; then rewrite metrics.json."""
        with self._writing(self.measurements):
            self.measurements.mkdir(exist_ok=True)
        for j, index in enumerate(images):
            for x, suffix in ((truth, "_truth"), (measurement, "_measurement")):
                path = self.images / image_name(index, suffix)
                with self._writing(path):
                    save_png(x[j], path)
            self._save(self.measurements / measurement_name(index), lambda f, r=raw[j]: torch.save(r, f))
        for j, (index, sample) in enumerate(pairs):
            path = self.images / image_name(index, sample_suffix(sample))
            with self._writing(path):
                save_png(output[j], path)
            value = output[j].detach().float().cpu().clone()
            self._save(self.measurements / measurement_name(index, sample_suffix(sample)),
                       lambda f, v=value: torch.save({"x": v}, f))
            self._values[(index, sample)] = value
            self.sample_rows[(index, sample)] = {"index": index, "sample": sample, **_finite_or_none(rows[j])}
        self.seconds += seconds
        self.write("running")

    def add_image(self, index: int, stats: dict[str, Any], mean: Tensor, std: Tensor) -> None:
        """Record the posterior of image ``index`` once its K samples are: mean and std PNGs and raw values, and its
        ``per_image`` row (the mean over its samples of each of their metrics, the measurement's baseline metrics,
        and ``stats``: ``diffexp.evaluation.posterior.image_statistics``). metrics.json is rewritten by the caller
        (``write``), once for all the images a batch completes."""
        for x, suffix, save in ((mean, "_mean", save_png), (std, "_std", save_std_heatmap)):
            path = self.images / image_name(index, suffix)
            with self._writing(path):
                save(x, path)
        self._save(self.measurements / measurement_name(index, POSTERIOR_RECORD),
                   lambda f: torch.save({"mean": mean.float().cpu(), "std": std.float().cpu()}, f))
        samples = [self.sample_rows[(index, k)] for k in range(self.num_samples)]
        row: dict[str, Any] = {"index": index}
        for key in samples[0]:
            if key in ("index", "sample", "diverged", "residual_limit") or key.startswith("baseline_"):
                continue
            values = [r.get(key) for r in samples]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            row[key] = float(np.mean(values)) if numeric else None
        row.update({k: v for k, v in samples[0].items() if k.startswith("baseline_")})
        row["diverged_samples"] = sum(bool(r.get("diverged")) for r in samples)
        row.update(_finite_or_none(stats))
        self.rows[index] = row
        for k in range(self.num_samples):
            self._values.pop((index, k), None)

    def result(self, status: str, error: str | None = None) -> dict[str, Any]:
        """The ``metrics.json`` content (module docstring)."""
        from diffexp.evaluation.posterior import aggregate

        rows = [self.rows[i] for i in sorted(self.rows)]
        samples = [self.sample_rows[p] for p in sorted(self.sample_rows)]
        diverged = [r for r in samples if r.get("diverged")]
        warnings = [
            f"image {r['index']} sample {r['sample']}: final residual {r['residual']:.4g} is far above the "
            f"measurement's (limit {r['residual_limit']:.4g}): the output does not fit its measurement (a diverging "
            "sampler: step size too large? too few steps, or an untrained model)"
            for r in diverged
        ]
        if status == "ok" and diverged:
            status = "diverged"
        done = len(samples) / self.num_samples  # images' worth of samples
        metric_names = [m for m in METRICS if m != "residual"]
        return {
            "status": status,
            "error": error,
            "warnings": warnings,
            **self.header,
            "num_finished": len(rows),
            "num_finished_samples": len(samples),
            "seconds": self.seconds,
            "seconds_per_image": self.seconds / done if samples else None,
            "seconds_per_sample": self.seconds / len(samples) if samples else None,
            "metrics": summarize_ci(rows) if rows else {},
            "baseline": summarize_ci(rows, "baseline_") if rows else {},
            **(aggregate(rows, metric_names) if rows else {}),
            "per_image": rows,
            "per_sample": samples,
        }

    def _grid(self, indices: list[int], load: Callable[[str], Tensor]) -> Image.Image:
        """The posterior grid, and coverage.png next to it."""
        path = self.out_dir / "coverage.png"
        curve = (self.result("ok").get("coverage") or {}).get("curve")
        if curve:
            with self._writing(path):
                save_coverage_plot(curve, path, num_samples=self.num_samples)
        return self._posterior_grid(indices, load)

    def _posterior_grid(self, indices: list[int], load: Callable[[str], Tensor]) -> Image.Image:
        """One row per image: truth | measurement | the K samples | mean | std (viridis, one scale for the grid)."""
        stds = []
        for i in indices:
            path = self.measurements / measurement_name(i, POSTERIOR_RECORD)
            with self._writing(path):
                stds.append(torch.load(path, map_location="cpu", weights_only=True)["std"])
        vmax = max(float(s.mean(0).max()) for s in stds)
        columns = [load("_truth"), load("_measurement"), *(load(sample_suffix(k)) for k in range(self.num_samples)),
                   load("_mean")]
        columns = [c.expand(-1, 3, -1, -1) for c in columns]
        columns.append(torch.stack([std_tile(s, vmax) for s in stds]))
        return comparison_grid(columns)
