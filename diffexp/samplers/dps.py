"""Diffusion Posterior Sampling (Chung et al., ICLR 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, ancestral_step, clip_x0, grid_alphas


def dps(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    step_size: float = 1.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DPS: x' = ancestral step from x_t (with x̂0 = Tweedie(x_t)), then
    x_{t-1} = x' − ζ·∇_{x_t} ‖y − A(x̂0(x_t))‖₂ with the gradient through the UNet.

    As in the official code the norm is not squared and x̂0 is clipped as the scheduler asks; unlike
    it, the norm is taken per image, so an image's result never depends on its batch. ``step_size`` = ζ.
    """
    if y is None or operator is None:
        raise ValueError("sampler=dps needs a measurement: use a task with an operator (not task=generate)")
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("dps", f"sampler.step_size={step_size} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = clip_x0(model, model.x0(x_in, t), clip_denoised)
            residual = (y - operator(x0)).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(residual.sum(), x_in)
        x0 = x0.detach()
        x_prev = ancestral_step(
            model, x_in.detach(), x0, ab_all[i], ab_prev_all[i], generators, last=i + 1 == len(timesteps)
        )
        x = x_prev - step_size * grad
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "residual": residual.detach()})
    return x


dps.guided = True
