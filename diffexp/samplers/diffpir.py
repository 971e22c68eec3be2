"""Diffusion plug-and-play image restoration, DiffPIR (Zhu et al., CVPR Workshops 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.ddim import mixed_update
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import PositiveFloat, UnitFloat


def data_step(operator: Any, x0: Tensor, y: Tensor, rho: Tensor) -> Tensor:
    """x̂0' = argmin_x ‖y − A x‖² + ρ‖x − x̂0‖² (DiffPIR eq. 13 with ρ = ρ_t), by ``operator.prox``.

    ρ = 0 (σ_y = 0) is the limit ρ → 0⁺: the minimiser of ‖x − x̂0‖ among the solutions of A x = y,
    x̂0 − A⁺(A x̂0 − y).
    """
    if operator.sigma_y == 0:
        return x0 - operator.pinv(operator(x0) - y)
    return operator.prox(x0, y, rho=rho)


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"linear", "pinv", "prox"}),
    noise=frozenset({"gaussian"}),
    network_calls=per_step,
    sampling_steps=per_step,
)


@torch.no_grad()
def diffpir(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    lam: PositiveFloat = 1.0,
    zeta: UnitFloat = 1.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DiffPIR: Tweedie's x̂0, a proximal data step, then the ζ-mixed step to t-1.

        x̂0' = argmin ‖y − A x‖² + ρ_t‖x − x̂0‖²,   ρ_t = λ·σ_y²/σ̄_t²,  σ̄_t² = (1−ᾱ_t)/ᾱ_t   (eqs. 12–13)
        ε̂ = (x_t − sqrt(ᾱ_t)·x̂0')/sqrt(1−ᾱ_t)
        x_{t-1} = sqrt(ᾱ_{t-1})·x̂0' + sqrt(1−ᾱ_{t-1})·(sqrt(1−ζ)·ε̂ + sqrt(ζ)·z)            (eq. 15)

    ``lam`` = λ weighs the prior against the data (the paper's ρ_t with σ_n the measurement noise);
    ``zeta`` = ζ ∈ [0, 1] is the share of fresh noise (ζ = 0: deterministic, DDIM-like). The prox is
    the operator's closed form (identity, masks, average pooling, circular blur) or conjugate gradients.
    """
    require_measurement("diffpir", y, operator)
    if lam <= 0:
        raise ValueError(f"sampler.lam={lam} must be > 0")
    if not 0 <= zeta <= 1:
        raise ValueError(f"sampler.zeta={zeta} must lie in [0, 1]")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("diffpir", f"sampler.lam={lam} too small", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab, ab_prev = ab_all[i], ab_prev_all[i]
        x0 = clip_x0(model, model.x0(x, t), clip_denoised)
        x0 = data_step(operator, x0, y, lam * operator.sigma_y**2 * ab / (1 - ab))
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = mixed_update(x0, eps, ab_prev, zeta, generators, noise=i + 1 < len(timesteps))
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
