"""``run(cfg)``: one experiment, from a composed Hydra config to ``metrics.json`` and images."""

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from diffexp.evaluation.fid import DistributionMetrics, add_distribution
from diffexp.models.diffusion import DiffusionModel
from diffexp.tracking.console import log_summary
from diffexp.errors import ConfigError
from diffexp.rundir.claim import claim
from diffexp.rundir.recorder import Recorder, settings_hash, settings_values
from diffexp.samplers.base import SamplingDivergedError
from diffexp.models.schedule import respaced_timesteps, sdedit_start
from diffexp.validate import SAMPLER_META_KEYS, config_problems, model_problems, peek_num_train_timesteps, validate_data

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run; ``code`` is the exit status to leave with."""

    def __init__(self, code: int) -> None:
        super().__init__(f"interrupted by {'SIGINT' if code == 130 else 'SIGTERM'}")
        self.code = code


def resolve_device(name: str) -> torch.device:
    """``runtime.device``: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"runtime.device={name!r} but CUDA is not available; allowed here: auto, cpu"])
    return device


def image_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of image ``index``: all of its randomness (operator, noise, sampler) comes from it."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def sampler_parts(cfg_sampler: DictConfig) -> tuple[Any, int, int | None]:
    """Split ``cfg.sampler`` into the sampler function (a partial) and its time-grid keys."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg_sampler, resolve=True))  # ${task...} needs the root
    fn_cfg = OmegaConf.masked_copy(resolved, [k for k in resolved if k not in SAMPLER_META_KEYS])
    return instantiate(fn_cfg), int(cfg_sampler.num_steps), cfg_sampler.get("t_start")


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


def _prepare_model(model: DiffusionModel, runtime: DictConfig, device: torch.device) -> DiffusionModel:
    model = model.to(device)
    dtype = DTYPES[runtime.dtype]
    model.autocast_dtype = None if dtype == torch.float32 else dtype  # the UNet only: operators stay float32
    if runtime.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    if runtime.compile:
        model.unet = torch.compile(model.unet)
    return model


def _load_model(cfg: DictConfig, problems: list[str]) -> DiffusionModel:
    """The model, with the checks that need it (T, image size) added to the config ``problems`` so that all
    are reported at once. With config problems the model is not loaded (that may take long): its T is then
    read from its scheduler config when that is a local file."""
    if problems:
        T = peek_num_train_timesteps(cfg.model)
        steps = cfg.sampler.get("num_steps")
        if T is not None and isinstance(steps, int) and steps > T:
            problems.append(f"sampler.num_steps={steps} is invalid: allowed is 1..{T} (the model's T)")
        raise ConfigError(problems)
    model = instantiate(cfg.model)
    problems = model_problems(cfg, model)
    if problems:
        raise ConfigError(problems)
    return model


def _dtype_problems(cfg: DictConfig, device: torch.device, sample: Any) -> list[str]:
    if cfg.runtime.dtype != "float16":
        return []
    if device.type == "cpu":
        return ["runtime.dtype=float16 on the CPU: about 10x slower than float32 (no float16 CPU kernels); "
                "allowed on CPU: float32, bfloat16"]
    if getattr(sample.func, "needs_unet_grad", False):
        return [f"runtime.dtype=float16 with sampler={cfg.sampler.name}: it backpropagates through the UNet, "
                "which float16 underflows without loss scaling; allowed: float32, bfloat16"]
    return []


def _diagnose(err: SamplingDivergedError, model: DiffusionModel, x: torch.Tensor, t: torch.Tensor) -> Exception:
    """A NaN/Inf is blamed on the sampler's step size by default; say so when the model itself produced it."""
    with torch.no_grad():
        eps = model.eps(x, t)
    if torch.isfinite(eps).all():
        return err
    return SamplingDivergedError(
        f"the model ({model.name}) produced NaN/Inf at the first step (t={int(t)}) from finite inputs: "
        "its weights are likely corrupted (the sampler's settings are not the cause)"
    )


def _per_image_count(sample: Any, attribute: str, timesteps: torch.Tensor) -> int:
    """One per grid step unless the sampler declares ``attribute(timesteps, **hparams)``: ``network_calls``
    (UNet evaluations per image, metrics.json ``nfe``) or ``sampling_steps`` (callbacks per batch: progress bar
    and W&B ``sampling/step``; DDNM's time travel samples stretches of the grid again)."""
    count = getattr(sample.func, attribute, None)
    return int(count(timesteps, **sample.keywords)) if count is not None else len(timesteps)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns the content of ``metrics.json`` plus ``objective`` for sweepers
    (the mean of ``optimized_metric``; None when the run diverged: the Optuna sweeper then fails that trial,
    while a NaN would make its ``study.tell`` raise and end the study)."""
    problems = config_problems(cfg)
    model = _load_model(cfg, problems)  # raises ConfigError listing every problem, if any
    device = resolve_device(cfg.runtime.device)
    sample, num_steps, t_start = sampler_parts(cfg.sampler)
    dtype_problems = _dtype_problems(cfg, device, sample)
    if dtype_problems:
        raise ConfigError(dtype_problems)
    out_dir = Path(cfg.output_dir)
    claimed = claim(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    try:
        return _run(cfg, model, device, sample, num_steps, t_start, claimed.previous)
    finally:
        claimed.release()


def _run(
    cfg: DictConfig,
    model: DiffusionModel,
    device: torch.device,
    sample: Any,
    num_steps: int,
    t_start: int | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    out_dir = Path(cfg.output_dir)
    if cfg.runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it
    torch.use_deterministic_algorithms(cfg.runtime.deterministic)  # set both ways: jobs share a process
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    model = _prepare_model(model, cfg.runtime, device)
    guided = bool(getattr(sample.func, "guided", False))
    operator_factory = instantiate(cfg.task.operator) if cfg.task.operator is not None else None
    has_truth = operator_factory is not None
    sdedit = has_truth and not guided
    if sdedit and not cfg.task.get("sdedit", False):
        raise ConfigError(
            [f"sampler={cfg.sampler.name} cannot solve task={cfg.task.name}: it needs measurement guidance; "
             "use a posterior sampler (dps, scoreald, pigdm, ddnm, diffpir, daps, reddiff)"]
        )
    if guided and not has_truth:
        raise ConfigError([f"sampler={cfg.sampler.name} needs a measurement; task=generate supports ddpm, ddim"])
    if has_truth:  # build one operator now so that bad task settings fail before any sampling
        operator_factory(image_shape=model.image_shape, generators=[image_generator(cfg.seed, 0, device)])
    metrics = instantiate(cfg.metrics) if has_truth else None
    distribution = DistributionMetrics.from_metrics_config(  # FID/KID: missing weights fail here, before sampling
        cfg.metrics, channels=model.channels, size=model.sample_size, has_truth=has_truth
    )
    T = model.num_train_timesteps
    if sdedit:
        t_start = sdedit_start(model.alphas_cumprod, cfg.task.sigma_y) if t_start is None else int(t_start)
    grid = respaced_timesteps(T, num_steps, t_max=t_start).to(device)
    truth_all = (
        instantiate(cfg.data)(channels=model.channels, size=model.sample_size, num_images=cfg.num_images)
        if has_truth
        else None
    )
    if truth_all is not None:
        validate_data(truth_all, cfg, model.image_shape)
    header = {
        "task": cfg.task.name, "sampler": cfg.sampler.name, "model": model.name, "num_images": cfg.num_images,
        "nfe": _per_image_count(sample, "network_calls", grid), "channels": model.channels, "t_start": int(grid[0]), "settings": settings_hash(cfg),
        "settings_values": settings_values(cfg),
    }
    recorder = Recorder(out_dir, header, has_truth=has_truth, previous=previous)
    logger = instantiate(cfg.logger)(cfg=cfg, output_dir=out_dir)
    todo = [i for i in range(cfg.num_images) if i not in recorder.done]
    batches = [todo[k : k + cfg.batch_size] for k in range(0, len(todo), cfg.batch_size)]
    steps = _per_image_count(sample, "sampling_steps", grid)
    progress = tqdm(total=len(batches) * steps, desc=f"{cfg.task.name}/{cfg.sampler.name}", unit="step")
    status, error, exit_code = "failed", None, 1
    try:
        with _signals():
            for number, batch in enumerate(batches):
                gens = [image_generator(cfg.seed, i, device) for i in batch]
                start = time.perf_counter()
                if has_truth:
                    truth = truth_all[batch].to(device)
                    operator = operator_factory(image_shape=model.image_shape, generators=gens).to(device)
                    y = operator.measure(truth, gens)
                    if sdedit:
                        x = model.alpha_bar(grid[:1], y).sqrt() * y
                    else:
                        x = torch.stack([torch.randn(model.image_shape, generator=g, device=device) for g in gens])
                else:
                    truth = operator = y = None
                    x = torch.stack([torch.randn(model.image_shape, generator=g, device=device) for g in gens])
                callback = functools.partial(
                    _on_step, progress=progress, logger=logger, operator=operator, y=y, offset=number * steps
                )
                try:
                    out = sample(model, x, timesteps=grid, generators=gens, y=y, operator=operator, callback=callback)
                except SamplingDivergedError as err:
                    raise _diagnose(err, model, x, grid[0]) from err
                out = out.float().clamp(-1, 1)
                seconds = time.perf_counter() - start
                rows, baseline, raw = _evaluate(metrics, operator, out, truth, y, len(batch))
                recorder.add(batch, out, rows, seconds, truth=truth, measurement=baseline, raw=raw)
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
            result = add_distribution(result, distribution, out_dir)
            logger.log_results(result, out_dir)
        finally:
            logger.finish(exit_code)
        log_summary(result, out_dir, logger)
    objective = (result["metrics"].get(cfg.optimized_metric) or {}).get("mean") if has_truth else None
    if result["status"] == "diverged":
        objective = None
    return {**result, "objective": objective}


def _on_step(state: dict[str, Any], *, progress: tqdm, logger: Any, operator: Any, y: Any, offset: int) -> None:
    """Per sampling step: progress bar, and every ``log_every`` steps the tracker (``step`` counts over the
    whole run, so per-step charts are monotone across batches)."""
    progress.update(1)
    every = getattr(logger, "log_every", 0)
    if every and (state["i"] + 1) % every == 0:
        logger.log_step({**state, "step": offset + state["i"]}, operator=operator, y=y)


DIVERGENCE_FACTOR = 3.0  # final residual above this many times the measurement's: flagged as diverged


@torch.no_grad()
def _evaluate(
    metrics: Any, operator: Any, out: torch.Tensor, truth: Any, y: Any, n: int
) -> tuple[list[dict[str, Any]], Any, Any]:
    """Per-image metrics of the output and of the measurement-only baseline, plus raw measurements.

    An image whose final residual ‖A(x̂) − y‖ exceeds ``DIVERGENCE_FACTOR`` times the larger of the
    baseline's residual and the noise's expected norm σ_y·sqrt(m) (at least 0.01·sqrt(m), m the
    measurement size) is flagged ``diverged``: finite, but not a reconstruction of this measurement.
    """
    if metrics is None:
        return [{} for _ in range(n)], None, None
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
