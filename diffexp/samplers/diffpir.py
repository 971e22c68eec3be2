"""Diffusion plug-and-play image restoration, DiffPIR (Zhu et al., CVPR Workshops 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.ddim import mixed_update
from diffexp.samplers.registry import sampler
from diffexp.settings import PositiveFloat, UnitFloat

SkipType = Literal["uniform", "quad"]


def quad_timesteps(num_steps: int, t_max: int) -> Tensor:
    """The official code's ``skip_type='quad'`` grid over [0, t_max], decreasing, dense near t = 0.

    ``main_ddpir_*.py`` (T = t_max + 1): ``seq = [int(s) for s in np.sqrt(np.linspace(0, T**2, iter_num))]``,
    ``seq[-1] = T - 1``, and step k runs at t_k = T − 1 − seq_k (``sigmas[seq[k]]`` is ᾱ's noise level at that
    t). Repeated timesteps (many steps on a short range) are kept once, so the grid can be shorter than
    ``num_steps`` (from about 0.6·T steps on; at 100 steps over T = 1000: 999, 899, 857, ..., 10, 5, 0).
    """
    if num_steps < 1 or t_max < 0:
        raise ValueError(f"quad_timesteps: num_steps={num_steps} must be >= 1 and t_max={t_max} >= 0")
    if num_steps == 1:
        return torch.tensor([t_max], dtype=torch.long)
    total = t_max + 1
    seq = [int(s) for s in np.sqrt(np.linspace(0, total**2, num_steps))]
    seq[-1] = total - 1
    kept = sorted({t_max - s for s in seq}, reverse=True)
    return torch.tensor(kept, dtype=torch.long)


def sampling_grid(timesteps: Tensor, skip_type: str) -> Tensor:
    """The grid DiffPIR runs on: ``timesteps`` (``uniform``, the run's respaced grid) or the ``quad`` grid with as
    many steps over the same range."""
    if skip_type == "uniform":
        return timesteps
    if skip_type == "quad":
        return quad_timesteps(len(timesteps), int(timesteps[0])).to(timesteps.device)
    raise ValueError(f"sampler.skip_type={skip_type!r} must be uniform or quad")


def network_calls(timesteps: Tensor, skip_type: str = "uniform", **hparams: object) -> int:
    """UNet evaluations per image (metrics.json ``nfe``), also the callbacks per batch: one per step of the grid."""
    return len(sampling_grid(timesteps, skip_type))


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
    # Gaussian noise only: its prox ‖y − Ax‖² + ρ_t‖x − x̂0‖², ρ_t = λσ_y²/σ̄_t², is the Gaussian data term
    noise=frozenset({"gaussian"}),
    network_calls=network_calls,
    sampling_steps=network_calls,
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
    lam: PositiveFloat = 4.0,
    zeta: UnitFloat = 1.0,
    skip_type: SkipType = "uniform",
    prox_last: bool = True,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DiffPIR: Tweedie's x̂0, a proximal data step, then the ζ-mixed step to t-1.

        x̂0' = argmin ‖y − A x‖² + ρ_t‖x − x̂0‖²,   ρ_t = λ·σ_n²/σ̄_t²,  σ̄_t² = (1−ᾱ_t)/ᾱ_t   (eqs. 12–13)
        ε̂ = (x_t − sqrt(ᾱ_t)·x̂0')/sqrt(1−ᾱ_t)
        x_{t-1} = sqrt(ᾱ_{t-1})·x̂0' + sqrt(1−ᾱ_{t-1})·(sqrt(1−ζ)·ε̂ + sqrt(ζ)·z)            (eq. 15)

    ``lam`` is the paper's λ, in the units of the official code (``main_ddpir_*.py``: ``rhos = lambda_ *
    sigma**2 / sigma_ks**2``): σ_n is the measurement noise in [0, 1] image units, σ_n = σ_y/2 for our σ_y
    in [-1, 1], and σ̄_t is in [-1, 1] units, so ρ_t = λ·(σ_y/2)²·ᾱ_t/(1−ᾱ_t). (Before issue #22 ``lam`` used
    σ_y itself: an old ``sampler.lam=x`` is the new ``sampler.lam=4x``, bit for bit.) The official scripts run
    λ = 7, ζ = 0.3 (deblurring), λ = 1, ζ = 1 (inpainting) and sweep λ = 2…12 at ζ = 0.25 (×4 SR).
    ``zeta`` = ζ ∈ [0, 1] is the share of fresh noise (ζ = 0: deterministic, DDIM-like). The prox is the
    operator's closed form (identity, masks, average pooling, circular blur) or conjugate gradients.

    ``skip_type`` (default ``uniform``): ``uniform`` runs the run's respaced grid (``sampler.num_steps``
    evenly spaced steps); ``quad`` the official grid with as many steps (``quad_timesteps``: t = T − 1 −
    int(sqrt(k/(n−1))·T), dense near t = 0). ``prox_last`` (default true): the data step also at the last
    grid step, so the result is x̂0' there; false is the official code's choice (``if seq[i] != seq[-1]``),
    no data step at the last step, so the result is the network's x̂0 at t = 0 (the official script then
    keeps x_t at t = 0 itself, which differs from that x̂0 by the 1 % noise of ᾱ_0 = 0.9999).
    """
    require_measurement("diffpir", y, operator)
    if lam <= 0:
        raise ValueError(f"sampler.lam={lam} must be > 0")
    if not 0 <= zeta <= 1:
        raise ValueError(f"sampler.zeta={zeta} must lie in [0, 1]")
    timesteps = sampling_grid(timesteps, skip_type)
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("diffpir", f"sampler.lam={lam} too small", timesteps, x.device)
    sigma_n = operator.sigma_y / 2  # the noise level in [0, 1] units, as the paper's λ is defined
    for i, t in enumerate(timesteps):
        ab, ab_prev, last = ab_all[i], ab_prev_all[i], i + 1 == len(timesteps)
        x0 = clip_x0(model, model.x0(x, t), clip_denoised)
        if prox_last or not last:
            x0 = data_step(operator, x0, y, lam * sigma_n**2 * ab / (1 - ab))
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = mixed_update(x0, eps, ab_prev, zeta, generators, noise=not last)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
