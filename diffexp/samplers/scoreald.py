"""Score-based annealed-Langevin posterior sampling (Jalal et al., NeurIPS 2021) in DDPM form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, ancestral_step, clip_x0, grid_alphas


@torch.no_grad()
def scoreald(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    step_size: float = 0.7,
    clip_denoised: bool | None = None,
) -> Tensor:
    """Ancestral prior step plus Jalal et al.'s annealed likelihood step, without backprop through the UNet.

    Jalal et al. add A^T(y − A x)/(σ_y² + γ²) to the prior score, γ the annealing level of the
    sample. A VP sample x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε is rescaled to x̃_t = x_t/sqrt(ᾱ_t) =
    x0 + γ_t·ε with γ_t² = (1−ᾱ_t)/ᾱ_t, so p(y | x_t) ≈ N(y; A x̃_t, (σ_y² + γ_t²)I) and

        ∇_{x_t} log p(y | x_t) = A^T(y − A x̃_t) / (sqrt(ᾱ_t)·(σ_y² + γ_t²)).

    Tweedie adds (1−ᾱ_t)/sqrt(ᾱ_t)·∇ log p to x̂0, so we weight the step by (1 − ᾱ_t) like the prior
    score there:

        x_{t-1} = x' + η·(1−ᾱ_t)·∇_{x_t} log p(y | x_t)
                = x' − η·(1−ᾱ_t)/(2(σ_y² + γ_t²))·∇_{x_t}‖A(x_t/sqrt(ᾱ_t)) − y‖²,

    with x' the DDPM ancestral step. For A = I, σ_y = 0, η = 1 moves x̃_t onto y. ``step_size`` = η.
    Comparing A x_t itself with y would pull the sample towards the wrong scale sqrt(ᾱ_t).
    """
    if y is None or operator is None:
        raise ValueError("sampler=scoreald needs a measurement: use a task with an operator (not task=generate)")
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    sigma2 = operator.sigma_y**2
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("scoreald", f"sampler.step_size={step_size} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab = ab_all[i]
        x0 = clip_x0(model, model.x0(x, t), clip_denoised)
        x_prev = ancestral_step(model, x, x0, ab, ab_prev_all[i], generators, last=i + 1 == len(timesteps))
        r = operator(x / ab.sqrt()) - y
        gamma2 = (1 - ab) / ab
        x = x_prev - step_size * (1 - ab) / (ab.sqrt() * (sigma2 + gamma2)) * operator.adjoint(r)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "residual": (y - operator(x0)).flatten(1).norm(dim=1)})
    return x


scoreald.guided = True
