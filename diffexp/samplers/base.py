"""Pieces shared by the samplers: per-image noise, the DDPM posterior step, divergence checks.

Every sampler is a plain function with one signature::

    sampler(model, x, *, timesteps, generators, y=None, operator=None, callback=None, **hparams) -> x0

``timesteps`` is a decreasing grid (``diffexp.schedule``), ``generators`` holds one
``torch.Generator`` per image (row of ``x``) so that an image's result never depends on its batch,
and ``callback`` receives ``dict(i, t, x, x0, ...)`` after every step. Samplers do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Callback = Callable[[dict[str, Any]], None]


class SamplingDivergedError(FloatingPointError):
    """NaN or Inf appeared in x_t or x̂0 during sampling."""


def per_image_noise(generators: Sequence[torch.Generator], like: Tensor) -> Tensor:
    """Standard normal noise shaped like ``like``, row i drawn from ``generators[i]``."""
    if len(generators) != like.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {like.shape[0]} images")
    return torch.stack(
        [torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )


def clip_x0(model: Any, x0: Tensor, clip_denoised: bool | None) -> Tensor:
    """Clamp x̂0 to the model's ``clip_sample_range`` when asked (None: the scheduler's ``clip_sample``)."""
    clip = model.clip_sample if clip_denoised is None else clip_denoised
    return x0.clamp(-model.clip_sample_range, model.clip_sample_range) if clip else x0


def step_alphas(model: Any, timesteps: Tensor, i: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(ᾱ_t, ᾱ_prev) of step i on the grid, ᾱ_prev = 1 after the last step; as scalars of ``like``'s dtype."""
    ab = model.alphas_cumprod[timesteps[i]]
    ab_prev = model.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(ab)
    return ab.to(like.dtype), ab_prev.to(like.dtype)


def ancestral_step(
    model: Any, x: Tensor, x0: Tensor, ab: Tensor, ab_prev: Tensor, generators: Sequence[torch.Generator]
) -> Tensor:
    """One DDPM ancestral step x_t → x_{t-1} (Ho et al. 2020, eqs. 6–7) on a possibly respaced grid.

    μ̃ = sqrt(ᾱ_{t-1})·β_t/(1−ᾱ_t)·x̂0 + sqrt(α_t)·(1−ᾱ_{t-1})/(1−ᾱ_t)·x_t with α_t = ᾱ_t/ᾱ_{t-1},
    β_t = 1 − α_t; σ_t² = β̃_t = (1−ᾱ_{t-1})/(1−ᾱ_t)·β_t (fixed_small) or β_t (fixed_large).
    No noise is added after the last step.
    """
    alpha = ab / ab_prev
    beta = 1 - alpha
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x
    if ab_prev >= 1:
        return mean
    if model.variance_type == "fixed_small":
        var = ((1 - ab_prev) / (1 - ab) * beta).clamp(min=1e-20)
    else:
        var = beta
    return mean + var.sqrt() * per_image_noise(generators, x)


def check_finite(sampler: str, i: int, t: Tensor, hint: str, **tensors: Tensor) -> None:
    """Raise ``SamplingDivergedError`` naming the sampler, step and likely cause if any tensor is not finite."""
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise SamplingDivergedError(
                f"{sampler}: non-finite values in {name} at step {i} (t={int(t)}); likely cause: {hint}"
            )
