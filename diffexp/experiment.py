"""``run(cfg)``: one experiment, from a composed Hydra config to ``metrics.json`` and images.

The run is a list of stages, each a small function: check (``diffexp.validate``) → load the model → claim the
output directory → ``prepare`` (device, model, problem, metrics, data) → ``open_records`` (recorder, tracker) →
for each batch ``solve_batch`` (measure, initial state, sample; ``diffexp.solve``) → ``evaluate`` → record →
``finish`` (distribution metrics, tracker, console summary).

With ``num_samples=K`` > 1 a batch is a list of (image, sample) pairs (``sample_batches``; ``batch_size`` counts
samples), solved by ``solve_samples`` (each image measured once; sample k from its own stream, ``diffexp.rng``),
scored per sample by ``evaluate``, and each image whose K samples are recorded gets its posterior statistics
(``diffexp.evaluation.posterior.image_statistics``). FID/KID are not computed then (they read ``images/<i>.png``).
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import signal
import sys
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

from diffexp.errors import ConfigError, DataError
from diffexp.evaluation.fid import DistributionMetrics, add_distribution
from diffexp.evaluation.posterior import image_statistics, mean_std
from diffexp.models.prior import Prior
from diffexp.rng import image_generator
from diffexp.rundir.claim import claim
from diffexp.rundir.posterior import PosteriorRecorder
from diffexp.rundir.recorder import Recorder, settings_hash, settings_values
from diffexp.rundir.runconfig import restore_hydra_files
from diffexp.runtime import DTYPES, resolve_device
from diffexp.solve import Problem, Solved, distinct_images, solve_batch, solve_samples
from diffexp.tracking.console import log_summary
from diffexp.validate import config_problems, model_problems, unloaded_model_problems, validate_data

log = logging.getLogger(__name__)
DIVERGENCE_FACTOR = 3.0  # final residual above this many times the measurement's: flagged as diverged


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run; ``code`` is the exit status to leave with."""

    def __init__(self, code: int) -> None:
        super().__init__(f"interrupted by {'SIGINT' if code == 130 else 'SIGTERM'}")
        self.code = code


@contextmanager
def _signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``Interrupted(130/143)`` in the main thread; in a worker process of a parallel
    sweep, the death of the sweep's driver too (``_orphan_watch``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(130 if signum == signal.SIGINT else 143)

    # SIGINT too: a process started in the background inherits SIGINT ignored, and `kill -INT` must still stop it
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _orphan_watch(multiprocessing.current_process().name != "MainProcess"):
            yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


ORPHANED = threading.Event()  # set by ``_orphan_watch``: the worker exits once its run has recorded what it did


def _exit_if_orphaned() -> None:
    """End an orphaned worker process (joblib would keep it, idle, waiting for the next job of a dead sweep)."""
    if ORPHANED.is_set():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143)


@contextmanager
def _orphan_watch(enabled: bool, every: float = 1.0) -> Iterator[None]:
    """A worker process (``hydra/launcher=parallel``: joblib's loky workers) whose parent, the sweep's driver, is
    gone (``kill`` or ``kill -9`` of ``python run.py -m``) sends itself SIGTERM within ``every`` seconds: the run
    records what it finished and stops, and the process exits (``_exit_if_orphaned``), instead of sampling on with
    nobody to report to. A single run is not
    watched (``nohup python run.py`` outlives its shell on purpose)."""
    if not enabled:
        yield
        return
    parent, done = os.getppid(), threading.Event()

    def watch() -> None:
        while not done.wait(every):
            if os.getppid() != parent:
                log.error("the sweep's driver (pid %d) is gone: stopping this job", parent)
                ORPHANED.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="diffexp-orphan-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def load_model(cfg: DictConfig, problems: list[str]) -> Prior:
    """The model, with the checks that need it (T, image size) added to the config ``problems`` so that all
    are reported at once. With config problems the model is not loaded (that may take long): its T and image
    shape are then read from its config files when they are local (``unloaded_model_problems``)."""
    if problems:
        raise ConfigError(problems + unloaded_model_problems(cfg))
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
    if cfg.get("num_samples", 1) > 1 and cfg.task.operator is None:
        raise ConfigError([f"num_samples={cfg.num_samples}: posterior samples need a measurement; task={cfg.task.name} "
                           "has none (use num_images for more samples)"])
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
        truth = _load_data(cfg, model)
        validate_data(truth, cfg, model.image_shape)
    return Setup(device, model, problem, metrics, distribution, truth)


def _load_data(cfg: DictConfig, model: Prior) -> torch.Tensor:
    """The ground truth; a loader's ``ValueError`` or ``OSError`` (a user's own loader too) is a ``DataError``."""
    try:
        return instantiate(cfg.data)(channels=model.channels, size=model.sample_size, num_images=cfg.num_images)
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        raise DataError([f"data ({cfg.data._target_}): {err}"], title="unusable data") from err


def open_records(cfg: DictConfig, setup: Setup, previous: dict[str, Any] | None) -> tuple[Recorder, Any]:
    """The recorder of the output directory (resuming ``previous``) and the tracker."""
    header = {
        "task": cfg.task.name, "sampler": cfg.sampler.name, "model": setup.model.name, "num_images": cfg.num_images,
        "nfe": setup.problem.network_calls, "channels": setup.model.channels, "t_start": int(setup.problem.grid[0]),
        "settings": settings_hash(cfg), "settings_values": settings_values(cfg),
    }
    num_samples = int(cfg.get("num_samples", 1))
    if num_samples > 1:  # nfe per image (all its samples) and per sample; K = 1 keeps the header as it was
        header = {**header, "num_samples": num_samples, "nfe": num_samples * setup.problem.network_calls,
                  "nfe_per_sample": setup.problem.network_calls}
    out_dir = Path(cfg.output_dir)
    common = {"has_truth": setup.truth is not None, "previous": previous, "image_shape": tuple(setup.model.image_shape)}
    recorder = (PosteriorRecorder(out_dir, header, **common, num_samples=num_samples) if num_samples > 1
                else Recorder(out_dir, header, **common))
    recorder.start(cfg)  # run_config.yaml and metrics.json (running) before the first image
    return recorder, instantiate(cfg.logger)(cfg=cfg, output_dir=out_dir)


def batches(cfg: DictConfig, done: set[int] | Any) -> list[list[int]]:
    """The image indices still to do, in batches of ``batch_size``."""
    return _chunks([i for i in range(cfg.num_images) if i not in done], cfg.batch_size)


def sample_batches(cfg: DictConfig, done: set[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The (image, sample) pairs still to do, image by image, in batches of ``batch_size`` pairs (``num_samples``
    > 1): the samples of an image share a batch unless ``batch_size`` splits them."""
    todo = [(i, k) for i in range(cfg.num_images) for k in range(cfg.num_samples) if (i, k) not in done]
    return _chunks(todo, cfg.batch_size)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[n : n + size] for n in range(0, len(items), size)]


def _solve_posterior_batch(
    cfg: DictConfig, setup: Setup, recorder: PosteriorRecorder, batch: list[tuple[int, int]], callback: Any
) -> None:
    """Sample, score and record a batch of (image, sample) pairs, then the posterior of every image now complete."""
    start = time.perf_counter()
    images = distinct_images(batch)
    truth = setup.truth[images].to(setup.device)
    solved = solve_samples(setup.problem, setup.model, truth, batch, seed=cfg.seed, callback=callback)
    seconds = time.perf_counter() - start
    rows, baseline, raw = evaluate(setup.metrics, solved, truth[list(solved.rows)], len(batch))
    first = [solved.rows.index(n) for n in range(len(images))]  # each image's first row
    recorder.add_samples(batch, solved.x, rows, seconds, truth=truth, measurement=baseline[first],
                         raw=[raw[j] for j in first], images=images)
    _record_posteriors(setup, recorder)


def _record_posteriors(setup: Setup, recorder: PosteriorRecorder) -> None:
    """The posterior statistics of every image whose K samples are recorded (after a batch; on resume)."""
    pending = recorder.pending()
    for index in pending:
        samples = recorder.samples_of(index)
        mean, std = mean_std(samples)
        recorder.add_image(index, image_statistics(samples, setup.truth[index], setup.metrics), mean, std)
    if pending:
        recorder.write("running")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns the content of ``metrics.json`` plus ``objective`` for sweepers
    (the mean of ``optimized_metric``; None when the run diverged: the Optuna sweeper then fails that trial,
    while a NaN would make its ``study.tell`` raise and end the study)."""
    out_dir = Path(cfg.output_dir)
    try:
        model = load_model(cfg, config_problems(cfg))  # raises ConfigError listing every problem, if any
        claimed = claim(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        try:
            return _run(cfg, prepare(cfg, model), claimed.previous)
        finally:
            claimed.release()
    except BaseException:
        restore_hydra_files(out_dir)  # Hydra wrote this run's config there: back to the results' (run_config.yaml)
        raise
    finally:
        _exit_if_orphaned()


def _run(cfg: DictConfig, setup: Setup, previous: dict[str, Any] | None) -> dict[str, Any]:
    out_dir = Path(cfg.output_dir)
    recorder, logger = open_records(cfg, setup, previous)
    posterior = recorder.num_samples > 1
    todo = sample_batches(cfg, recorder.done_samples) if posterior else batches(cfg, recorder.done)
    steps = setup.problem.sampling_steps
    progress = tqdm(total=len(todo) * steps, desc=f"{cfg.task.name}/{cfg.sampler.name}", unit="step")
    status, error, exit_code = "failed", None, 1
    try:
        with _signals():
            if posterior:
                _record_posteriors(setup, recorder)  # resumed: images whose samples were all recorded
            for number, batch in enumerate(todo):
                if posterior:
                    callback = functools.partial(_on_step, progress=progress, logger=logger, offset=number * steps)
                    _solve_posterior_batch(cfg, setup, recorder, batch, callback)
                    continue
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
        result = None
        try:  # failing: a write error here (disk full, directory deleted) is logged, the run's own error raised
            result = recorder.finish(status, error, failing=status != "ok")
            if result is not None:
                result = add_distribution(result, None if posterior else setup.distribution, out_dir)
                logger.log_results(result, out_dir)
        except BaseException:
            exit_code = exit_code or 1
            raise
        finally:
            logger.finish(exit_code)
        if result is not None:
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
    recon, base = metrics(out, truth, operator), metrics(baseline, truth, operator)  # operator: aligned_psnr
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
