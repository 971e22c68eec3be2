"""``run(cfg)``: one experiment, from a composed Hydra config to ``metrics.json`` and images.

The run is a list of stages, each a small function: check (``diffexp.validate``) → load the model → claim the
output directory → ``prepare`` (device, model, problem, metrics, data) → ``open_records`` (recorder, tracker) →
for each batch ``solve_batch`` (measure, initial state, sample; ``diffexp.solve``) → ``evaluate`` → record →
``finish`` (distribution metrics, tracker, console summary).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from diffexp.errors import ConfigError
from diffexp.evaluation.fid import DistributionMetrics, add_distribution
from diffexp.models.prior import Prior
from diffexp.rng import image_generator
from diffexp.rundir.claim import claim
from diffexp.rundir.recorder import Recorder, settings_hash, settings_values
from diffexp.runtime import DTYPES, resolve_device
from diffexp.solve import Problem, Solved, solve_batch
from diffexp.tracking.console import log_summary
from diffexp.validate import config_problems, grid_problems, model_problems, peek_num_train_timesteps, validate_data

log = logging.getLogger(__name__)
DIVERGENCE_FACTOR = 3.0  # final residual above this many times the measurement's: flagged as diverged


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run; ``code`` is the exit status to leave with."""

    def __init__(self, code: int) -> None:
        super().__init__(f"interrupted by {'SIGINT' if code == 130 else 'SIGTERM'}")
        self.code = code


@contextmanager
def _signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``Interrupted(130/143)`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(130 if signum == signal.SIGINT else 143)

    # SIGINT too: a process started in the background inherits SIGINT ignored, and `kill -INT` must still stop it
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def load_model(cfg: DictConfig, problems: list[str]) -> Prior:
    """The model, with the checks that need it (T, image size) added to the config ``problems`` so that all
    are reported at once. With config problems the model is not loaded (that may take long): its T is then
    read from its scheduler config when that is a local file."""
    if problems:
        T = peek_num_train_timesteps(cfg.model)
        raise ConfigError(problems + (grid_problems(cfg.sampler, T) if T is not None else []))
    model = instantiate(cfg.model)
    problems = model_problems(cfg, model)
    if problems:
        raise ConfigError(problems)
    return model


@dataclass(frozen=True)
class Setup:
    """What every batch of a run shares."""

    device: torch.device
    model: Prior
    problem: Problem
    metrics: Any  # diffexp.evaluation.metrics.Metrics for inverse tasks, None for generation
    distribution: DistributionMetrics | None
    truth: torch.Tensor | None  # all ground-truth images (num_images, C, H, W), on the CPU


def prepare(cfg: DictConfig, model: Prior) -> Setup:
    """Device and runtime flags, the model on the device, the problem (with one operator built now, so that bad
    task settings fail before any sampling), metrics, and the ground truth, checked."""
    device = resolve_device(cfg.runtime.device)
    if cfg.runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it
    torch.use_deterministic_algorithms(cfg.runtime.deterministic)  # set both ways: jobs share a process
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    model = model.prepare(device=device, dtype=DTYPES[cfg.runtime.dtype], channels_last=cfg.runtime.channels_last,
                          compile=cfg.runtime.compile)
    problem = Problem.from_config(cfg, model, device)
    has_truth = problem.operator_factory is not None
    if has_truth:
        problem.operator_factory(image_shape=model.image_shape, generators=[image_generator(cfg.seed, 0, device)])
    metrics = instantiate(cfg.metrics) if has_truth else None
    distribution = DistributionMetrics.from_metrics_config(  # FID/KID: missing weights fail here, before sampling
        cfg.metrics, channels=model.channels, size=model.sample_size, has_truth=has_truth
    )
    truth = None
    if has_truth:
        truth = instantiate(cfg.data)(channels=model.channels, size=model.sample_size, num_images=cfg.num_images)
        validate_data(truth, cfg, model.image_shape)
    return Setup(device, model, problem, metrics, distribution, truth)


def open_records(cfg: DictConfig, setup: Setup, previous: dict[str, Any] | None) -> tuple[Recorder, Any]:
    """The recorder of the output directory (resuming ``previous``) and the tracker."""
    header = {
        "task": cfg.task.name, "sampler": cfg.sampler.name, "model": setup.model.name, "num_images": cfg.num_images,
        "nfe": setup.problem.network_calls, "channels": setup.model.channels, "t_start": int(setup.problem.grid[0]),
        "settings": settings_hash(cfg), "settings_values": settings_values(cfg),
    }
    out_dir = Path(cfg.output_dir)
    recorder = Recorder(out_dir, header, has_truth=setup.truth is not None, previous=previous)
    return recorder, instantiate(cfg.logger)(cfg=cfg, output_dir=out_dir)


def batches(cfg: DictConfig, done: set[int] | Any) -> list[list[int]]:
    """The image indices still to do, in batches of ``batch_size``."""
    todo = [i for i in range(cfg.num_images) if i not in done]
    return [todo[k : k + cfg.batch_size] for k in range(0, len(todo), cfg.batch_size)]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns the content of ``metrics.json`` plus ``objective`` for sweepers
    (the mean of ``optimized_metric``; None when the run diverged: the Optuna sweeper then fails that trial,
    while a NaN would make its ``study.tell`` raise and end the study)."""
    model = load_model(cfg, config_problems(cfg))  # raises ConfigError listing every problem, if any
    claimed = claim(Path(cfg.output_dir), resume=cfg.resume, overwrite=cfg.overwrite)
    try:
        return _run(cfg, prepare(cfg, model), claimed.previous)
    finally:
        claimed.release()


def _run(cfg: DictConfig, setup: Setup, previous: dict[str, Any] | None) -> dict[str, Any]:
    out_dir = Path(cfg.output_dir)
    recorder, logger = open_records(cfg, setup, previous)
    todo = batches(cfg, recorder.done)
    steps = setup.problem.sampling_steps
    progress = tqdm(total=len(todo) * steps, desc=f"{cfg.task.name}/{cfg.sampler.name}", unit="step")
    status, error, exit_code = "failed", None, 1
    try:
        with _signals():
            for number, batch in enumerate(todo):
                gens = [image_generator(cfg.seed, i, setup.device) for i in batch]
                start = time.perf_counter()
                truth = setup.truth[batch].to(setup.device) if setup.truth is not None else None
                callback = functools.partial(_on_step, progress=progress, logger=logger, offset=number * steps)
                solved = solve_batch(setup.problem, setup.model, truth, gens, callback=callback)
                seconds = time.perf_counter() - start
                rows, baseline, raw = evaluate(setup.metrics, solved, truth, len(batch))
                recorder.add(batch, solved.x, rows, seconds, truth=truth, measurement=baseline, raw=raw)
        status, exit_code = "ok", 0
    except KeyboardInterrupt as err:
        error, exit_code = "interrupted by SIGINT", 130
        raise SystemExit(130) from err
    except Interrupted as err:
        error, exit_code = str(err), err.code
        raise SystemExit(err.code) from err
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        progress.close()
        try:
            result = recorder.finish(status, error)
            result = add_distribution(result, setup.distribution, out_dir)
            logger.log_results(result, out_dir)
        finally:
            logger.finish(exit_code)
        log_summary(result, out_dir, logger)
    objective = (result["metrics"].get(cfg.optimized_metric) or {}).get("mean") if setup.truth is not None else None
    if result["status"] == "diverged":
        objective = None
    return {**result, "objective": objective}


def _on_step(state: dict[str, Any], operator: Any, y: Any, *, progress: tqdm, logger: Any, offset: int) -> None:
    """Per sampling step: progress bar, and every ``log_every`` steps the tracker, with the data residual
    ‖A(x̂0) − y‖ per image computed here once (``step`` counts over the whole run, so per-step charts are
    monotone across batches)."""
    progress.update(1)
    if logger.log_every and (state["i"] + 1) % logger.log_every == 0:
        logged = {**state, "step": offset + state["i"]}
        if operator is not None:
            with torch.no_grad():
                logged["residual"] = (operator(state["x0"].float()) - y).flatten(1).norm(dim=1)
        logger.log_step(logged)


@torch.no_grad()
def evaluate(
    metrics: Any, solved: Solved, truth: torch.Tensor | None, n: int
) -> tuple[list[dict[str, Any]], Any, Any]:
    """Per-image metrics of the output and of the measurement-only baseline, plus raw measurements.

    An image whose final residual ‖A(x̂) − y‖ exceeds ``DIVERGENCE_FACTOR`` times the larger of the
    baseline's residual and the noise's expected norm σ_y·sqrt(m) (at least 0.01·sqrt(m), m the
    measurement size) is flagged ``diverged``: finite, but not a reconstruction of this measurement.
    """
    if metrics is None:
        return [{} for _ in range(n)], None, None
    operator, y, out = solved.operator, solved.y, solved.x
    baseline = operator.baseline(y).float().clamp(-1, 1)
    recon, base = metrics(out, truth), metrics(baseline, truth)
    residual = (operator(out) - y).flatten(1).norm(dim=1).tolist()
    base_residual = (operator(baseline) - y).flatten(1).norm(dim=1).tolist()
    noise = max(operator.sigma_y, 0.01) * math.sqrt(y[0].numel())
    rows = []
    for j in range(n):
        row = {name: values[j] for name, values in recon.items()}
        row["residual"] = residual[j]
        row.update({f"baseline_{name}": values[j] for name, values in base.items()})
        row["baseline_residual"] = base_residual[j]
        limit = DIVERGENCE_FACTOR * max(base_residual[j], noise)
        if residual[j] > limit:
            row.update(diverged=True, residual_limit=limit)
        rows.append(row)
    raw = [{"y": y[j].cpu(), **{k: v.cpu() for k, v in operator.image_parameters(j).items()}} for j in range(n)]
    return rows, baseline, raw
