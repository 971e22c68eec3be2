"""DDIM sampling (Song, Meng & Ermon, ICLR 2021, eq. 12) with stochasticity ``eta``, and its update step
shared by the guided samplers that move on the DDIM chain (ΠGDM, DDNM+, DiffPIR)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import NonNegativeFloat


def ddim_sigma(ab: Tensor, ab_prev: Tensor, eta: float) -> Tensor:
    """σ_t = η·sqrt((1−ᾱ_{t-1})/(1−ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_{t-1}) (DDIM eq. 16); η = 1 is DDPM's β̃_t."""
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()


def ddim_update(
    x0: Tensor,
    eps: Tensor,
    ab_prev: Tensor,
    sigma: Tensor,
    generators: Sequence[torch.Generator],
    *,
    noise: bool,
    scale: Tensor | float = 1.0,
) -> Tensor:
    """x_{t-1} = sqrt(ᾱ_{t-1})·x̂0 + scale·(sqrt(1 − ᾱ_{t-1} − σ_t²)·ε + σ_t·z) (DDIM eq. 12).

    ``noise`` False drops σ_t·z (η = 0, or after the last step); ``scale`` < 1 shrinks the whole
    stochastic part, as DDNM+ does to make room for the measurement noise carried by x̂0.
    """
    x = ab_prev.sqrt() * x0 + scale * (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    if noise:
        x = x + scale * sigma * per_image_noise(generators, x)
    return x


def mixed_update(
    x0: Tensor,
    eps: Tensor,
    ab_prev: Tensor,
    zeta: float,
    generators: Sequence[torch.Generator],
    *,
    noise: bool,
    scale: Tensor | float = 1.0,
) -> Tensor:
    """x_{t-1} = sqrt(ᾱ_{t-1})·x̂0 + scale·sqrt(1−ᾱ_{t-1})·(sqrt(1−ζ)·ε + sqrt(ζ)·z): the ζ-mixed update of
    DiffPIR (Zhu et al. 2023, eq. 15) and DDNM's code (ζ = η²); ``noise`` False drops z (after the last step)."""
    x = ab_prev.sqrt() * x0 + scale * (1 - ab_prev).sqrt() * (1 - zeta) ** 0.5 * eps
    if noise and zeta > 0:
        x = x + scale * (1 - ab_prev).sqrt() * zeta**0.5 * per_image_noise(generators, x)
    return x


@sampler(
    measurement=False,
    unet_grad=False,
    operator=frozenset(),
    noise=frozenset(),
    network_calls=per_step,
    sampling_steps=per_step,
)


@torch.no_grad()
def ddim(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    eta: NonNegativeFloat = 0.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """x_{t-1} = sqrt(ᾱ_{t-1})·x̂0 + sqrt(1 − ᾱ_{t-1} − σ_t²)·ε + σ_t·z,
    σ_t = η·sqrt((1−ᾱ_{t-1})/(1−ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_{t-1}).

    ε is the network's prediction even when x̂0 is clipped (as diffusers' ``DDIMScheduler``).
    """
    if eta < 0:
        raise ValueError(f"sampler.eta={eta} must be >= 0")
    x0 = x
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("ddim", "a model producing NaN/Inf", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab, ab_prev = ab_all[i], ab_prev_all[i]
        eps = model.eps(x, t)
        x0 = clip_x0(model, (x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_denoised)
        sigma = ddim_sigma(ab, ab_prev, eta)
        x = ddim_update(x0, eps, ab_prev, sigma, generators, noise=eta > 0 and i + 1 < len(timesteps))
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
