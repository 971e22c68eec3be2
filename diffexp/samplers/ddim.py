"""DDIM sampling (Song, Meng & Ermon, ICLR 2021, eq. 12) with stochasticity ``eta``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, per_image_noise


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
    eta: float = 0.0,
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
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(timesteps):
            x = x + sigma * per_image_noise(generators, x)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


ddim.guided = False
