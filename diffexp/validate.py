"""Start-up checks: every setting validated before any compute, with a message naming key, value and rule."""

from __future__ import annotations

from omegaconf import DictConfig

DTYPES_ALLOWED = ("float32", "bfloat16", "float16")


def _check(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: {rule}")


def validate(cfg: DictConfig) -> None:
    """Raise ``ValueError`` for the first bad setting."""
    _check(isinstance(cfg.num_images, int) and cfg.num_images >= 1, "num_images", cfg.num_images, "must be an integer >= 1")
    _check(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be an integer >= 1")
    _check(isinstance(cfg.seed, int), "seed", cfg.seed, "must be an integer")
    steps = cfg.sampler.num_steps
    _check(isinstance(steps, int) and steps >= 1, "sampler.num_steps", steps, "must be an integer >= 1")
    if "step_size" in cfg.sampler:
        _check(cfg.sampler.step_size > 0, "sampler.step_size", cfg.sampler.step_size, "must be > 0")
    if "eta" in cfg.sampler:
        _check(cfg.sampler.eta >= 0, "sampler.eta", cfg.sampler.eta, "must be >= 0")
    if "sigma_y" in cfg.task:
        _check(cfg.task.sigma_y >= 0, "task.sigma_y", cfg.task.sigma_y, "must be >= 0")
    _check(cfg.runtime.dtype in DTYPES_ALLOWED, "runtime.dtype", cfg.runtime.dtype, f"allowed: {DTYPES_ALLOWED}")
