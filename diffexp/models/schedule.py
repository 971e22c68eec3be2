"""Noise schedules and time grids as pure functions.

Respacing follows improved-DDPM / DPS ``timestep_respacing`` (Nichol & Dhariwal 2021): keep
``num_steps`` evenly spaced timesteps of the training chain and recompute the betas from the
cumulative products at the kept steps, so that ᾱ is unchanged where a step is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor


def respaced_timesteps(num_train_timesteps: int, num_steps: int, t_max: int | None = None) -> Tensor:
    """Decreasing grid of ``num_steps`` timesteps evenly spaced over ``[0, t_max]``.

    ``t_max`` defaults to ``num_train_timesteps - 1``. With ``num_steps`` equal to the number of
    available steps this is the full chain ``t_max, ..., 1, 0``.
    """
    t_max = num_train_timesteps - 1 if t_max is None else t_max
    if not 0 <= t_max < num_train_timesteps:
        raise ValueError(f"t_max={t_max} must lie in [0, {num_train_timesteps - 1}]")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} must lie in [1, {num_train_timesteps}] (the model's T)")
    num_steps = min(num_steps, t_max + 1)
    if num_steps == 1:
        return torch.tensor([t_max], dtype=torch.long)
    stride = t_max / (num_steps - 1)
    kept = sorted({round(i * stride) for i in range(num_steps)})
    return torch.tensor(kept[::-1], dtype=torch.long)


def respaced_betas(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """Betas of the respaced chain: ``β_k = 1 − ᾱ_{t_k} / ᾱ_{t_{k-1}}`` (ᾱ = 1 before the first step).

    ``timesteps`` is a decreasing grid; the result is aligned with it.
    """
    ab = alphas_cumprod[timesteps]
    ab_prev = previous_alphas_cumprod(alphas_cumprod, timesteps)
    return 1.0 - ab / ab_prev


def previous_alphas_cumprod(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """ᾱ at the next (lower) grid point for each step of a decreasing grid; 1 after the last step."""
    ab = alphas_cumprod[timesteps]
    one = torch.ones(1, dtype=ab.dtype, device=ab.device)
    return torch.cat([ab[1:], one])


def ve_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """VE noise levels σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) of a VP schedule (x_t/sqrt(ᾱ_t) = x0 + σ_t·ε)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def sdedit_start(alphas_cumprod: Tensor, sigma: float) -> int:
    """Timestep whose VE noise level sqrt((1 − ᾱ_t)/ᾱ_t) is closest to ``sigma`` (SDEdit, Meng et al. 2022)."""
    return int((ve_sigmas(alphas_cumprod) - sigma).abs().argmin())


def alphas_cumprod_problems(alphas_cumprod: Tensor) -> list[str]:
    """What makes ᾱ unusable: x̂0 divides by sqrt(ᾱ_t) and the score by sqrt(1 − ᾱ_t), so every ᾱ_t must be
    finite, in (0, 1) and non-increasing in t. ᾱ_t = 0 (β_t = 1) is a zero terminal SNR schedule."""
    ab = alphas_cumprod.double()
    if ab.numel() == 0:
        return ["scheduler: the schedule is empty (no training timestep); allowed: at least one"]
    if not torch.isfinite(ab).all():
        t = int((~torch.isfinite(ab)).nonzero()[0])
        return [f"scheduler: ᾱ_t is not finite at t = {t} (betas must be numbers in (0, 1)); allowed: finite ᾱ"]
    if (ab <= 0).any():
        t = int((ab <= 0).nonzero()[0])
        return [f"scheduler: ᾱ_t = {float(ab[t]):.3g} at t = {t} of {ab.numel()}: a zero terminal SNR schedule "
                "(β_t = 1, x_t pure noise, x̂0 undefined), which diffexp does not support; allowed: 0 < ᾱ_t < 1 "
                "at every t"]
    if (ab >= 1).any():
        t = int((ab >= 1).nonzero()[0])
        return [f"scheduler: ᾱ_t = {float(ab[t]):.3g} at t = {t} (β_t <= 0: no noise, the score is undefined); "
                "allowed: 0 < ᾱ_t < 1 at every t"]
    if (ab[1:] > ab[:-1]).any():
        t = int((ab[1:] > ab[:-1]).nonzero()[0]) + 1
        return [f"scheduler: ᾱ_t increases at t = {t} (β_t < 0); allowed: betas in (0, 1), ᾱ non-increasing"]
    return []
