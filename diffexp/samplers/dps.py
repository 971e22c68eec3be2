"""Diffusion Posterior Sampling (Chung et al., ICLR 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, ancestral_step, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import PositiveFloat


def safe_norm(r: Tensor) -> Tensor:
    """Row norms ‖r_i‖₂ whose gradient is 0 (a subgradient) for an all-zero row instead of 0/0 = NaN."""
    zero = (r == 0).all(dim=1, keepdim=True)
    return torch.where(zero, torch.ones_like(r), r).norm(dim=1) * ~zero.squeeze(1)


@sampler(
    measurement=True,
    unet_grad=True,
    operator=frozenset(),
    noise=frozenset({"gaussian", "poisson", "poisson_gaussian"}),  # any: it follows operator.noise.residual
    network_calls=per_step,
    sampling_steps=per_step,
)


def dps(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    step_size: PositiveFloat = 1.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DPS: x' = ancestral step from x_t (with x̂0 = Tweedie(x_t)), then
    x_{t-1} = x' − ζ·∇_{x_t} ‖y − A(x̂0(x_t))‖₂ with the gradient through the UNet.

    As in the official code the norm is not squared, x̂0 is clipped as the scheduler asks and a
    learned-variance model's own variance is used in the ancestral step (its ``p_sample``); unlike it,
    the norm is taken per image, so an image's result never depends on its batch. ``step_size`` = ζ.

    y − A(x̂0) is the noise model's ``residual`` (``diffexp.noise``): exactly y − A(x̂0) for Gaussian noise; for
    Poisson noise the deviance residual scaled by the effective σ, so the step follows the true Poisson likelihood
    (not the official code's ad-hoc ‖y − A(x̂0)‖/|y|, which is undefined at y = 0); for Poisson-Gaussian noise the
    residual weighted by the approximate per-pixel variance.
    """
    require_measurement("dps", y, operator)
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("dps", f"sampler.step_size={step_size} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps, v = model.eps_v(x_in, t)
            x0 = clip_x0(model, model.x0_from_eps(x_in, t, eps), clip_denoised)
            residual = safe_norm(operator.noise.residual(y, operator(x0)).flatten(1))
            (grad,) = torch.autograd.grad(residual.sum(), x_in)
        x0 = x0.detach()
        v = None if v is None else v.detach()
        x_prev = ancestral_step(
            model, x_in.detach(), x0, ab_all[i], ab_prev_all[i], generators, last=i + 1 == len(timesteps), v=v
        )
        x = x_prev - step_size * grad
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "residual": residual.detach()})
    return x
