"""DAPS with an exact x0 draw (``sampler=daps_exact``): Zhang et al.'s decoupled annealing (CVPR 2025, Algorithm 1)
on the model's VP grid, with x0 drawn exactly from its Gaussian instead of by Langevin steps.

This is a variant that departs from the authors on purpose (their algorithm is ``sampler=daps``,
``diffexp/samplers/daps.py``): τ = σ_y by default (theirs 0.01 against σ_y = 0.05), r_t² = (1−ᾱ_t)/ᾱ_t on the
respaced VP grid (theirs: 200 EDM poly-7 σ levels), Tweedie's x̂0 (``ode_steps`` 1; theirs a 5-step Euler ODE)
and the exact Gaussian draw (theirs 100 Langevin steps). It is the form that samples the Gaussian oracle
exactly (``benchmarks/posterior_bias.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from diffexp.models.schedule import previous_alphas_cumprod, respaced_timesteps
from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import Allowed, Finite, Ge, NonNegativeInt, PositiveFloat, PositiveInt


def ode_x0(model: Any, x: Tensor, grid: Tensor, clip_denoised: bool | None) -> Tensor:
    """x̂0(x_t): the probability-flow ODE (deterministic DDIM, η = 0) from x_t along ``grid`` (t, ..., 0);
    one step is Tweedie's x̂0 (DAPS's "few-step ODE solve" of x0 given x_t)."""
    ac = model.alphas_cumprod
    ab_all = ac[grid].to(x.dtype)
    ab_prev_all = previous_alphas_cumprod(ac, grid).to(x.dtype)
    for k, t in enumerate(grid):
        ab, ab_prev = ab_all[k], ab_prev_all[k]
        eps = model.eps(x, t)
        x0 = clip_x0(model, (x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_denoised)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x0


def gaussian_x0_draw(
    operator: Any, x0_hat: Tensor, y: Tensor, r2: Tensor, tau: float, generators: Sequence[torch.Generator]
) -> Tensor:
    """An exact draw from N(x0; x̂0, r²I)·N(y; A x0, τ²I) by perturb-and-MAP: x0 = argmin ‖y + τn − A x‖² +
    (τ²/r²)‖x − x̂0 − r z‖² (the minimiser of a perturbed quadratic is a draw from its Gaussian); τ = 0 is
    the limit τ → 0⁺, the draw of the prior part projected onto A x = y."""
    z = x0_hat + r2.sqrt() * per_image_noise(generators, x0_hat)
    if tau == 0:
        return z - operator.pinv(operator(z) - y)
    return operator.prox(z, y + tau * per_image_noise(generators, y), rho=tau**2 / r2)


def langevin_x0(
    operator: Any,
    x0_hat: Tensor,
    y: Tensor,
    r2: Tensor,
    tau: float,
    generators: Sequence[torch.Generator],
    steps: int,
    step_size: float,
) -> Tensor:
    """DAPS's Langevin steps (its eq. 9) on log N(x0; x̂0, r²I) + log N(y; A(x0), τ²I), from x̂0:
    x0 ← x0 − lr·((x0 − x̂0)/r² + Jᵀ(A(x0) − y)/τ²) + sqrt(2 lr)·z, lr = step_size/(1/r² + 1/τ²) (a step
    relative to the gradient's Lipschitz bound for ‖A‖ ≤ 1, so that step_size < 2 is stable at every level).
    Jᵀv is ``operator.vjp(x0, v)``: Aᵀv for a linear A (bit-identical), autograd's for a nonlinear one.

    A(x0) − y is the noise model's ``gradient(y, A(x0))`` = sigma_y²·∂nll/∂A(x0) (``diffexp.noise``): exactly
    A(x0) − y for Gaussian noise; for Poisson noise the likelihood term is then (sigma_y²/τ²)·∇nll, the true Poisson
    likelihood at τ = sigma_y (the default). Its curvature at a dim pixel of [0, 1] value v is 1/v times the bound
    above, so Poisson needs a smaller ``step_size`` (docs/operators.md)."""
    lr = step_size / (1 / r2 + 1 / tau**2)
    x0 = x0_hat
    for _ in range(steps):
        grad = (x0 - x0_hat) / r2 + operator.vjp(x0, operator.noise.gradient(y, operator(x0))) / tau**2
        x0 = x0 - lr * grad + (2 * lr).sqrt() * per_image_noise(generators, x0)
    return x0

def network_calls(timesteps: Tensor, ode_steps: int = 1, **hparams: object) -> int:
    """UNet evaluations per image (metrics.json ``nfe``): ``ode_steps`` per noise level t, at most t + 1."""
    return sum(min(ode_steps, t + 1) for t in timesteps.tolist())


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"differentiable"}),  # langevin_steps = 0 (the exact draw) also needs prox (and pinv)
    # Langevin steps follow any noise model's likelihood; the exact draw (langevin_steps=0) needs Gaussian noise
    noise=frozenset({"gaussian", "poisson", "poisson_gaussian"}),
    network_calls=network_calls,
    sampling_steps=per_step,
)


@torch.no_grad()
def daps_exact(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    ode_steps: PositiveInt = 1,
    langevin_steps: NonNegativeInt = 0,
    step_size: PositiveFloat = 0.5,
    tau: Annotated[float, Ge(0), Finite, Allowed("null (task.sigma_y) or a finite number >= 0")] | None = None,
    clip_denoised: bool | None = None,
) -> Tensor:
    """DAPS: at each noise level of ``timesteps`` (the annealing schedule),

        x̂0 = ODE(x_t → 0) in ``ode_steps`` DDIM steps,
        x0 ~ N(x0; x̂0, r_t²I)·N(y; A x0, τ²I),   r_t² = σ̄_t² = (1−ᾱ_t)/ᾱ_t (the paper's r_t = σ_t),
        x_{t'} = sqrt(ᾱ_{t'})·x0 + sqrt(1−ᾱ_{t'})·ε   (re-noising to the next level t', the paper's
                                                        x_{t'} = x0 + σ_{t'}ε in VE units),

    and x0 of the last level is the result. ``langevin_steps`` K > 0 draws x0 with the paper's K Langevin
    steps (``langevin_x0``, ``step_size`` relative to the Lipschitz bound); K = 0 (default) draws it
    exactly (``gaussian_x0_draw``: the target is Gaussian for a linear A, the limit the Langevin chain
    approaches); it needs a linear A (``prox``, ``pinv``), so a nonlinear operator needs K > 0 (the paper's
    K = 100: ``conf/tuned/<task>_daps_exact.yaml``). τ (``tau``) is the likelihood's noise level, the measurement's σ_y
    when null.
    Network calls: len(timesteps)·ode_steps.
    """
    require_measurement("daps_exact", y, operator)
    if ode_steps < 1:
        raise ValueError(f"sampler.ode_steps={ode_steps} must be >= 1")
    if langevin_steps < 0:
        raise ValueError(f"sampler.langevin_steps={langevin_steps} must be >= 0")
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    tau = operator.sigma_y if tau is None else float(tau)
    if tau < 0 or (langevin_steps > 0 and tau == 0):
        raise ValueError(
            f"sampler.tau={tau} (null: task.sigma_y) must be >= 0, and > 0 with sampler.langevin_steps > 0"
        )
    if langevin_steps == 0 and operator.noise.name != "gaussian":
        raise ValueError(f"sampler.langevin_steps=0 draws x0 exactly from a Gaussian likelihood; noise="
                         f"{operator.noise.name} needs Langevin steps: set sampler.langevin_steps > 0 (DAPS: 100) and "
                         "a small sampler.step_size (docs/operators.md)")
    if langevin_steps == 0 and not {"prox", "pinv"} <= operator.capabilities:
        raise ValueError(f"sampler.langevin_steps=0 draws x0 exactly, which needs a linear operator with prox and pinv "
                         f"({type(operator).__name__} offers {', '.join(sorted(operator.capabilities)) or 'none'}): "
                         "set sampler.langevin_steps > 0 (DAPS: 100)")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    T = model.num_train_timesteps
    inner = [respaced_timesteps(T, ode_steps, t_max=t).to(x.device) for t in timesteps.tolist()]
    check = FiniteCheck("daps_exact", "a model producing NaN/Inf or sampler.step_size too large", timesteps, x.device)
    x0 = x
    for i, t in enumerate(timesteps):
        ab, ab_prev = ab_all[i], ab_prev_all[i]
        x0_hat = ode_x0(model, x, inner[i], clip_denoised)
        r2 = (1 - ab) / ab
        if langevin_steps > 0:
            x0 = langevin_x0(operator, x0_hat, y, r2, tau, generators, langevin_steps, step_size)
        else:
            x0 = gaussian_x0_draw(operator, x0_hat, y, r2, tau, generators)
        if i + 1 < len(timesteps):
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * per_image_noise(generators, x0)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0
