"""Denoising diffusion null-space model, DDNM+ (Wang, Yu & Zhang, ICLR 2023, Algorithms 1–2 and eq. 19)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.ddim import mixed_update
def range_null_correction(operator: Any, x0: Tensor, y: Tensor, c2: Tensor | float) -> Tensor:
    """x̂0|y = x̂0 − Σ_t A⁺(A x̂0 − y) with Σ_t A⁺ = Aᵀ(AAᵀ + c²I)⁻¹ (DDNM+ eq. 19; see ``ddnm``).

    c = 0 is DDNM's x̂0|y = A⁺y + (I − A⁺A)x̂0 (eq. 13), computed with ``operator.pinv``.
    """
    if isinstance(c2, float) and c2 == 0:
        return x0 - operator.pinv(operator(x0) - y)
    return x0 - operator.adjoint(operator.solve_aat(operator(x0) - y, aat_weight=1.0, noise_var=c2))


@torch.no_grad()
def ddnm(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DDNM+: replace the range-space part of Tweedie's x̂0 by A⁺y, then step to t-1 as the authors' code:

        x_{t-1} = sqrt(ᾱ_{t-1})·x̂0|y + sqrt(1−ᾱ_{t-1})·(η·z + sqrt(1−η²)·ε),   ε the network's prediction.

    Noise: x̂0|y carries Σ_t A⁺(σ_y n), with coefficient a_t = sqrt(ᾱ_{t-1}) in x_{t-1}. The paper (eq. 19,
    A = UΣVᵀ) scales the correction per singular value s_i by λ_{t,i} = min(1, s_i·σ_t/(a_t σ_y)), so that
    the noise it lets through, a_t λ_{t,i} σ_y/s_i, stays below the step's noise level σ_t = sqrt(1−ᾱ_{t-1}),
    and shrinks the step's own noise to keep the total at σ_t. Without an SVD we use its smooth form
    λ_{t,i} = s_i²/(s_i² + c_t²), c_t = a_t σ_y/σ_t, i.e. Σ_t A⁺ = Aᵀ(AAᵀ + c_t²I)⁻¹ (``operator.solve_aat``;
    the same limits: 1 for s_i ≫ c_t, → 0 for s_i ≪ c_t). The noise it lets through is at most
    κ·σ_t with κ = max_{s ≤ 1} c_t s/(s² + c_t²) (½ for c_t ≤ 1, c_t/(1+c_t²) beyond; ‖A‖ ≤ 1), so the step's
    stochastic part is scaled by sqrt(1 − κ²). σ_y = 0 gives DDNM: A x̂0|y = y exactly. Time travel (the
    paper's Algorithm 3) is not implemented.
    """
    require_measurement("ddnm", y, operator)
    if not 0 <= eta <= 1:
        raise ValueError(f"sampler.eta={eta} must lie in [0, 1] (the noise share of the step)")
    sigma_y = operator.sigma_y
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("ddnm", "a model producing NaN/Inf", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab, ab_prev = ab_all[i], ab_prev_all[i]
        eps = model.eps(x, t)
        x0 = clip_x0(model, (x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_denoised)
        if sigma_y > 0:
            c = ab_prev.sqrt() * sigma_y / (1 - ab_prev).clamp(min=1e-20).sqrt()
            kappa = torch.where(c <= 1, torch.full_like(c, 0.5), c / (1 + c**2))
            x0, scale = range_null_correction(operator, x0, y, c**2), (1 - kappa**2).sqrt()
        else:
            x0, scale = range_null_correction(operator, x0, y, 0.0), 1.0
        x = mixed_update(x0, eps, ab_prev, eta**2, generators, noise=i + 1 < len(timesteps), scale=scale)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


ddnm.guided = True
