"""Decoupled annealing posterior sampling, DAPS, as its authors run it (Zhang et al., CVPR 2025, Algorithm 1).

The authors' DAPS-1K (repository zhangbingliang2019/DAPS: ``sampler.py``, ``cores/mcmc.py``,
``cores/scheduler.py``, ``configs/sampler/edm_daps.yaml``, ``configs/task/*.yaml``): 200 annealing levels of EDM
σ from 100 to 0.1 (poly-7), at each level a 5-step Euler probability-flow ODE from σ down to 0.01 for x̂0, then 100
Langevin steps on x0 with τ = 0.01 and a learning rate that decays linearly to 1 % over the run, then re-noising
to the next level. 1 000 network calls per image. Our exact-draw variant is ``sampler=daps_exact``.

Everything is in VE (EDM) units, x_σ = x0 + σ·ε. The shipped models are discrete-time VP models, so each σ is
rounded to the model's nearest level σ_t = sqrt((1−ᾱ_t)/ᾱ_t) (EDM's ``iDDPMPrecond.round_sigma``, the way Karras
et al. 2022 run discrete ADM models) and the network sees sqrt(ᾱ_t)·x_σ at timestep t. The authors' VP wrapper
(``VPPrecond``) instead feeds a continuous timestep from the continuous-VP approximation β(t) = 0.1 + 19.9 t of
the same linear schedule: a deviation of at most one training step's σ (under 3 % of σ on the default levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from diffexp.models.schedule import ve_sigmas
from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, require_measurement
from diffexp.samplers.registry import sampler
from diffexp.settings import Allowed, Finite, Gt, Le, NonNegativeInt, PositiveFloat, PositiveInt


def edm_sigmas(num: int, sigma_max: float, sigma_min: float, rho: float) -> Tensor:
    """The EDM poly-ρ grid of ``num`` points from σ_max to σ_min (Karras et al. 2022, eq. 5), float64:
    σ_i = (σ_max^(1/ρ) + i/(num−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    r = torch.linspace(0, 1, num, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def nearest_timesteps(table: Tensor, sigmas: Tensor) -> Tensor:
    """The timestep whose σ_t in ``table`` (the model's ``ve_sigmas``) is nearest to each σ (EDM's ``iDDPMPrecond``)."""
    return (table[None, :] - sigmas.double()[:, None]).abs().argmin(dim=1)


def ode_x0(model: Any, x: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
    """x̂0(x_σ): the authors' Euler probability-flow ODE (EDM eq. 4, ``DiffusionPFODE`` with ``solver='euler'``)
    through the levels (``t``, ``sigma``): x ← x + (σ_{k+1} − σ_k)·(x − D(x; σ_k))/σ_k with
    (x − D)/σ = ε_θ(sqrt(ᾱ_t)·x, t), one network call per step. The result is x at the last level (σ = 0.01 by
    default, the model's t = 0), not a denoised D: as the authors' code returns it."""
    for k in range(len(t) - 1):
        ab = 1 / (1 + sigma[k] ** 2)
        x = x + (sigma[k + 1] - sigma[k]) * model.eps(ab.sqrt() * x, t[k])
    return x


def langevin_x0(
    operator: Any,
    x0_hat: Tensor,
    y: Tensor,
    sigma: Tensor,
    tau: float,
    lr: float,
    steps: int,
    generators: Sequence[torch.Generator],
) -> Tensor:
    """The authors' Langevin steps on x0 (``MCMCSampler``, ``mc_algo=langevin``, ``prior_solver=gaussian``):

        x ← x + lr·(−∇_x‖A(x) − y‖²/τ² + (x̂0 − x)/σ²) + sqrt(2·lr)·z,   from x = x̂0,

    the loss ‖·‖² without a ½ (so the likelihood is N(y; A(x), τ²/2·I)). ∇‖A(x) − y‖² = 2·Jᵀ(A(x) − y) with Jᵀv
    ``operator.vjp`` (the explicit adjoint for a linear A, autograd's for a nonlinear one), and A(x) − y the noise
    model's ``gradient(y, A(x))`` (exactly A(x) − y for Gaussian noise; for Poisson noise the loss becomes
    2σ_y²·NLL, the authors having no Poisson form)."""
    x = x0_hat
    for _ in range(steps):
        data = operator.vjp(x, operator.noise.gradient(y, operator(x)))
        score = (x0_hat - x) / sigma**2 - 2 * data / tau**2
        x = x + lr * score + (2 * lr) ** 0.5 * per_image_noise(generators, x)
    return x


def network_calls(timesteps: Tensor, ode_steps: int = 5, **hparams: object) -> int:
    """UNet evaluations per image (metrics.json ``nfe``): ``ode_steps`` Euler steps per annealing level."""
    return len(timesteps) * ode_steps


def sampling_steps(timesteps: Tensor, **hparams: object) -> int:
    """Callbacks per batch: one per annealing level."""
    return len(timesteps)


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"differentiable"}),
    # the Langevin loss follows any noise model's gradient (Gaussian: the authors' ‖A(x) − y‖²)
    noise=frozenset({"gaussian", "poisson", "poisson_gaussian"}),
    network_calls=network_calls,
    sampling_steps=sampling_steps,
)
@torch.no_grad()
def daps(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    ode_steps: PositiveInt = 5,
    langevin_steps: NonNegativeInt = 100,
    lr: PositiveFloat = 1e-4,
    lr_min_ratio: Annotated[float, Gt(0), Le(1), Allowed("a number in (0, 1]")] = 0.01,
    tau: PositiveFloat = 0.01,
    sigma_max: PositiveFloat = 100.0,
    sigma_min: PositiveFloat = 0.1,
    ode_sigma_min: PositiveFloat = 0.01,
    rho: Annotated[float, Gt(0), Finite, Allowed("a finite number > 0")] = 7.0,
) -> Tensor:
    """DAPS (Algorithm 1): for each annealing level σ_i, i = 0, …, L−1 (L = ``num_steps``, the run's grid length),

        x̂0 = ODE(x_{σ_i} → σ = ``ode_sigma_min``) in ``ode_steps`` Euler steps on the poly-ρ grid (``ode_x0``),
        x0 ~ N(x0; x̂0, σ_i²I)·N(y; A(x0), τ²/2·I) by ``langevin_steps`` Langevin steps at
             lr_i = lr·(1 + i/(L+1)·(``lr_min_ratio`` − 1)) (``langevin_x0``),
        x_{σ_{i+1}} = x0 + σ_{i+1}·ε,

    and returns x0 of the last level. The levels are the first L of L+1 poly-ρ points from ``sigma_max`` to
    ``sigma_min`` (the authors' ``Scheduler.discretize``: σ_min itself is never visited; the last re-noising is
    to σ = 0); x starts as σ_0·ε, ε the run's initial noise. Defaults are DAPS-1K's; the per-task learning rates
    of the authors' ``configs/task`` are in ``conf/tuned/<task>_daps.yaml``.

    Deviations, each for a reason:
    - σ levels are rounded to the model's discrete levels (module docstring);
    - ``sigma_max`` is capped at the σ of the run's first timestep when a ``t_start`` lowers it;
    - non-finite values raise ``SamplingDivergedError`` naming the level, where the authors' Langevin loop
      silently returns zeros.
    Network calls: L·``ode_steps``; no backpropagation through the network.
    """
    require_measurement("daps", y, operator)
    if not sigma_max > sigma_min > ode_sigma_min > 0:
        raise ValueError(f"sampler.sigma_max={sigma_max} > sampler.sigma_min={sigma_min} > "
                         f"sampler.ode_sigma_min={ode_sigma_min} > 0 must hold")
    L = len(timesteps)
    table = ve_sigmas(model.alphas_cumprod.double().cpu())  # σ_t of every timestep, float64
    first = float(table[int(timesteps[0])])
    levels = edm_sigmas(L + 1, min(sigma_max, first), sigma_min, rho)[:L]
    level_t = nearest_timesteps(table, levels)
    level_sigma = table[level_t].to(x.device, x.dtype)
    inner = [nearest_timesteps(table, edm_sigmas(ode_steps + 1, float(s), ode_sigma_min, rho)) for s in level_sigma]
    inner_sigma = [table[t].to(x.device, x.dtype) for t in inner]
    inner = [t.to(x.device) for t in inner]
    level_ab = 1 / (1 + level_sigma**2)
    check = FiniteCheck("daps", "a model producing NaN/Inf or sampler.lr too large for 2/sampler.tau^2",
                        level_t, x.device)
    x = level_sigma[0] * x
    x0 = x
    for i in range(L):
        x0_hat = ode_x0(model, x, inner[i], inner_sigma[i])
        lr_i = lr * (1 + i / (L + 1) * (lr_min_ratio - 1))
        x0 = langevin_x0(operator, x0_hat, y, level_sigma[i], tau, lr_i, langevin_steps, generators)
        if i + 1 < L:
            x = x0 + level_sigma[i + 1] * per_image_noise(generators, x0)
        check(i, x=x, x0=x0)
        if callback is not None:
            ab = level_ab[i + 1] if i + 1 < L else torch.ones_like(level_ab[i])
            callback({"i": i, "t": level_t[i], "x": ab.sqrt() * x, "x0": x0})
    return x0
