"""DDPM ancestral sampling (Ho et al., NeurIPS 2020, Algorithm 2 with eqs. 6–7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, ancestral_step, clip_x0, grid_alphas
from diffexp.samplers.registry import per_step, sampler


@sampler(
    measurement=False,
    unet_grad=False,
    operator=frozenset(),
    noise=frozenset(),
    network_calls=per_step,
    sampling_steps=per_step,
)


@torch.no_grad()
def ddpm(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    clip_denoised: bool | None = None,
) -> Tensor:
    """Ancestral sampling: x̂0 by Tweedie, then x_{t-1} ~ q(x_{t-1} | x_t, x̂0).

    Unconditional: ``y`` and ``operator`` are ignored (a denoising run starts ``x`` from the
    noisy image instead, SDEdit). ``clip_denoised`` None follows the scheduler's ``clip_sample``.
    Learned-variance models use their predicted variance (improved DDPM eq. 15, ``ancestral_step``).
    """
    x0 = x
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("ddpm", "a model producing NaN/Inf", timesteps, x.device)
    for i, t in enumerate(timesteps):
        eps, v = model.eps_v(x, t)
        x0 = clip_x0(model, model.x0_from_eps(x, t, eps), clip_denoised)
        x = ancestral_step(model, x, x0, ab_all[i], ab_prev_all[i], generators, last=i + 1 == len(timesteps), v=v)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
