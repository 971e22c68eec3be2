"""Shared pieces of the benchmarks: settings, the real Hydra config, machine info, interleaved timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from diffexp.models.diffusion import DiffusionModel
from diffexp.models.schedule import respaced_timesteps
from diffexp.rng import image_generator
from diffexp.runtime import resolve_device
from diffexp.samplers.registry import available
from diffexp.solve import Problem

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = Path(__file__).resolve().parent / "results"


@cache
def posterior_samplers() -> tuple[str, ...]:
    """Every posterior sampler of ``conf/sampler/`` (``available()``, declared ``measurement=True``), by name."""
    return tuple(name for name, spec in available().items() if spec.measurement)


def _fast_samplers() -> tuple[str, ...]:
    return tuple(name for name in posterior_samplers() if name != "dps")


@dataclass(frozen=True)
class Settings:
    """Every size of every benchmark; ``python -m benchmarks.run --help`` lists them as options."""

    model: str = "mnist"  # conf/model/<model>.yaml
    data: str = "mnist_eval"  # conf/data/<data>.yaml (quality and DPS ground truth)
    device: str = "auto"  # runtime.device
    threads: int = 0  # torch.set_num_threads; 0 keeps torch's default
    repeats: int = 7  # timed runs per side, interleaved
    seed: int = 0
    gen_steps: int = 200  # 1. generation: ddpm vs diffusers.DDPMPipeline (ratio per step: any count)
    gen_batch: int = 8
    dps_task: str = "deblur"  # 2. DPS per image: diffexp vs deepinv vs the official loop
    dps_steps: int = 200
    dps_images: int = 2
    scaling_steps: int = 10  # 3. batch scaling (seconds per image do not depend on the step count)
    scaling_batches: tuple[int, ...] = (1, 8, 32)
    quality_steps: tuple[int, ...] = (50, 100, 250, 1000)  # 4. quality vs steps
    quality_images: int = 4
    quality_tasks: tuple[str, ...] = ("deblur", "inpaint")
    memory_batch: int = 8  # 1. and 5. peak memory, one fresh process per side
    memory_steps: int = 3
    fast_images: int = 8  # 6. fast samplers vs DPS (deblur, one batch)
    fast_samplers: tuple[str, ...] = field(default_factory=_fast_samplers)  # every posterior sampler but DPS
    fast_steps: int = 0  # 0: each sampler's default num_steps
    fast_offset: int = 8  # first digit of 6.: digits never used for tuning (make tune uses 0-7)
    fast_search: tuple[int, ...] = (10, 15, 20, 30, 40, 50, 70)  # 6.: step counts tried for the fewest within 0.2 dB


QUICK = {
    "repeats": 2, "gen_steps": 10, "gen_batch": 2, "dps_steps": 10, "dps_images": 1, "scaling_steps": 3,
    "scaling_batches": (1, 8), "quality_steps": (10, 20), "quality_images": 2, "memory_batch": 2, "memory_steps": 2,
    "fast_images": 2, "fast_steps": 2, "fast_search": (1,),
}


def settings_from(values: dict[str, Any], quick: bool) -> Settings:
    """Defaults, then the ``--quick`` sizes, then the options given on the command line."""
    base = replace(Settings(), **QUICK) if quick else Settings()
    return replace(base, **{k: v for k, v in values.items() if v is not None})


def setting_fields() -> list[tuple[str, Any, Any]]:
    """(name, type of one value, default) of each setting, for the command line."""
    out = []
    for f in fields(Settings):
        default = getattr(Settings(), f.name)
        out.append((f.name, type(default[0]) if isinstance(default, tuple) else type(default), default))
    return out


def compose_cfg(s: Settings, *overrides: str) -> DictConfig:
    """The real ``conf/config.yaml`` with the benchmark's model, data and device, plus ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"model={s.model}", f"data={s.data}", "logger=none", f"runtime.device={s.device}", *overrides],
        )


def setup(s: Settings) -> torch.device:
    """Apply the thread count and resolve the device."""
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    return resolve_device(s.device)


def load_model(s: Settings, device: torch.device) -> DiffusionModel:
    """The benchmark's model, on ``device``."""
    return instantiate(compose_cfg(s).model).to(device)


def problem(s: Settings, model: DiffusionModel, sampler: str, task: str, num_steps: int | None = None) -> Problem:
    """``diffexp.solve.Problem`` of ``sampler=<sampler> task=<task>`` (the tuned values of
    ``conf/tuned/<task>_<sampler>.yaml`` included) as ``run`` builds it, on the model's device; ``num_steps``
    overrides ``sampler.num_steps``."""
    steps = [] if num_steps is None else [f"sampler.num_steps={num_steps}"]
    cfg = compose_cfg(s, f"sampler={sampler}", f"task={task}", *steps)
    return Problem.from_config(cfg, model, model.alphas_cumprod.device)


def with_steps(problem: Problem, model: DiffusionModel, steps: int) -> Problem:
    """``problem`` on a ``steps``-step grid from the same first timestep (the benchmarks vary the step count)."""
    grid = respaced_timesteps(model.num_train_timesteps, steps, t_max=int(problem.grid[0]))
    return replace(problem, grid=grid.to(problem.grid.device))


def ground_truth(s: Settings, model: DiffusionModel, indices: list[int]) -> torch.Tensor:
    """The images ``indices`` of the benchmark's data (``conf/data/<data>.yaml``), on the model's device."""
    data = instantiate(compose_cfg(s).data)
    truth = data(channels=model.channels, size=model.sample_size, num_images=max(indices) + 1)
    return truth[indices].to(model.alphas_cumprod.device)


def generators(seed: int, indices: range | list[int], device: torch.device) -> list[torch.Generator]:
    """The per-image generators ``run`` would use for these image indices."""
    return [image_generator(seed, i, device) for i in indices]


def sync(device: torch.device) -> None:
    """Wait for queued work on an accelerator, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(
    sides: dict[str, Callable[[int], Any]], steps: int, repeats: int, device: torch.device, warmup_steps: int = 2
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time ``side(steps)`` for each side in one process: a short untimed warm-up of each, then
    ``repeats`` rounds, alternating the order each round (A B, B A, ...). Returns the seconds of each
    run per side and each side's output of its last run."""
    for side in sides.values():
        side(min(warmup_steps, steps))
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            outputs[name] = sides[name](steps)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio_note(seconds: dict[str, list[float]], a: str, b: str, label: str) -> str:
    """The ratio a / b of each interleaved round (both sides ran back to back, so slow phases of the
    machine hit both): its median and range show how much of a ratio of medians is noise."""
    ratios = [x / y for x, y in zip(seconds[a], seconds[b])]
    return (
        f"{label} per round: median {median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f} "
        f"over {len(ratios)} rounds (the spread is this machine's run-to-run noise)."
    )


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU, core and thread counts, library versions, accelerator name and the git commit."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": package_version("diffusers"),
        "deepinv": package_version("deepinv"),
        "commit": _git_commit(),
    }
    return info


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def write_result(out_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """``<out_dir>/<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return path


def settings_dict(s: Settings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}
