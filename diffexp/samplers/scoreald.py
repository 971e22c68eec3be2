"""ScoreALD: a predictor–corrector posterior sampler built on Jalal et al.'s likelihood score (NeurIPS 2021).

This is not Jalal et al.'s pure annealed Langevin dynamics (their Alg. 1: Langevin steps only, NCSN σ levels,
step ε·σ²/σ_L²). It is a DDPM ancestral predictor whose Tweedie x̂0 is shifted by their likelihood score in VP
form, followed by ``corrector_steps`` Langevin corrector steps per level (their update, on the VP grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, ancestral_step, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import NonNegativeInt, PositiveFloat


def likelihood_score(operator: Any, x: Tensor, y: Tensor, ab: Tensor) -> Tensor:
    """∇_{x_t} log p(y | x_t) with p(y | x_t) ≈ N(y; A x̃_t, σ_y²I + γ_t²AAᵀ), x̃_t = x_t/sqrt(ᾱ_t),
    γ_t² = (1−ᾱ_t)/ᾱ_t: Aᵀ(σ_y²I + γ_t²AAᵀ)⁻¹(y − A x̃_t)/sqrt(ᾱ_t).

    The covariance is the one a flat prior propagates: x̃_t = x0 + γ_t·ε, so A x̃_t − y has covariance
    γ_t²AAᵀ + σ_y²I (exact for a prior much broader than γ_t). ``operator.solve_aat`` applies its
    inverse in closed form (identity, masks, average pooling, circular blur) or by conjugate gradients.
    Aᵀ is ``operator.vjp`` at x̃_t (the explicit adjoint for a linear A, bit-identical). An operator without
    ``solve_aat`` (a nonlinear A) gets Jalal et al.'s paper form Jᵀ(y − A(x̃_t))/(σ_y² + γ_t²)/sqrt(ᾱ_t), J the
    Jacobian at x̃_t (the propagated covariance with JJᵀ taken as I).
    """
    gamma2 = (1 - ab) / ab
    x_tilde = x / ab.sqrt()
    r = y - operator(x_tilde)
    if "solve_aat" not in operator.capabilities:
        return operator.vjp(x_tilde, r / (operator.sigma_y**2 + gamma2)) / ab.sqrt()
    return operator.vjp(x_tilde, operator.solve_aat(r, aat_weight=gamma2, noise_var=operator.sigma_y**2)) / ab.sqrt()

def network_calls(timesteps: Tensor, corrector_steps: int = 1, **hparams: object) -> int:
    """UNet evaluations per image (metrics.json ``nfe``): the corrector runs after every step but the last."""
    return len(timesteps) + (len(timesteps) - 1) * corrector_steps


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"differentiable"}),  # solve_aat where offered, else the paper's scalar form
    # Gaussian noise only: N(A x̃_t, σ_y²I + γ_t²AAᵀ): a Gaussian likelihood convolved with the annealing noise
    noise=frozenset({"gaussian"}),
    network_calls=network_calls,
    sampling_steps=per_step,
)


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
    step_size: PositiveFloat = 1.0,
    corrector_steps: NonNegativeInt = 1,
    corrector_size: PositiveFloat = 1.0,
    clip_denoised: bool | None = None,
) -> Tensor:
    """Ancestral prior step with Jalal et al.'s likelihood score, without backprop through the UNet.

    Jalal et al. add Aᵀ(y − A x)/(σ_y² + γ²) to the prior score, γ the annealing level. In VP form
    (``likelihood_score``) ∇ log p(y | x_t) = Aᵀ(σ_y²I + γ_t²AAᵀ)⁻¹(y − A x_t/sqrt(ᾱ_t))/sqrt(ᾱ_t),
    and Tweedie's formula for the posterior p(x_t | y) moves x̂0 by (1−ᾱ_t)/sqrt(ᾱ_t) times it:

        x̂0|y = x̂0 + η·(1−ᾱ_t)/sqrt(ᾱ_t)·∇_{x_t} log p(y | x_t),     x_{t-1} ~ q(x_{t-1} | x_t, x̂0|y).

    Through the DDPM posterior mean (coefficient sqrt(ᾱ_{t-1})β_t/(1−ᾱ_t) of x̂0) this moves
    x_{t-1} by η·β_t/sqrt(α_t)·∇ log p(y | x_t): classifier guidance with the likelihood as classifier
    (Dhariwal & Nichol 2021), so η = 1 (``step_size``) is nominal and does not depend on ``num_steps``.
    With a Gaussian prior much broader than γ_t the likelihood is exact and the chain samples the
    posterior. Clipping (``clip_denoised``) applies to Tweedie's x̂0 before the shift: at high noise the
    shift is of the order of γ_t (it pulls x̃_t = x_t/sqrt(ᾱ_t), not x̂0, towards y) and clipping it
    would cut the guidance, whereas in x_{t-1} it is the small β_t/sqrt(α_t)·∇ log p.

    ``corrector_steps`` K > 0 adds Jalal et al.'s annealed Langevin corrector after each step, at the
    new level t' (one network call each): x ← x + α(∇log p_t'(x) + ∇log p(y | x)) + sqrt(2α)·z with
    α = ``corrector_size``·(1−ᾱ_t'). The score of x_t' scales as 1/sqrt(1−ᾱ_t') (its noise), so this α
    moves x by a fixed fraction of the noise level at every t', which is Jalal et al.'s α ∝ γ² in VP
    units; the likelihood term is the same propagated-covariance score as the predictor.

    The shipped config (``conf/sampler/scoreald.yaml``) runs η = 1 with K = 1, ``corrector_size`` = 1 on every
    task. The predictor alone cannot fill what A does not see: the flat-prior likelihood compares y with
    the noisy x̃_t only, so the network decides the unobserved part (an inpainting hole, SR's detail) at high
    noise from little evidence, and on the shipped model it stays below the measurement baseline on the
    12×12 box and ×4 SR at every η (at 1000 steps, for any η up to 32). One corrector step per level lets
    that part follow the data: it moves x by about the level's noise, σ_t·ε̂-sized, and re-draws as much
    noise. Size 1 is large for Langevin dynamics (ULA on a direction of variance 1−ᾱ_t' with α = 1−ᾱ_t'
    keeps twice that variance there); with the broad Gaussian prior it still samples the exact posterior
    (variance ratio 1.02, ``tests/test_posterior.py``), since there the target's variance is ≫ α. More
    levels mean more corrector steps, so 1000 steps score higher than 200 (README).
    """
    require_measurement("scoreald", y, operator)
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    if corrector_steps < 0:
        raise ValueError(f"sampler.corrector_steps={corrector_steps} must be >= 0")
    if corrector_size <= 0:
        raise ValueError(f"sampler.corrector_size={corrector_size} must be > 0")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("scoreald", f"sampler.step_size={step_size} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab, last = ab_all[i], i + 1 == len(timesteps)
        eps, v = model.eps_v(x, t)
        x0 = clip_x0(model, (x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_denoised)
        x0 = x0 + step_size * (1 - ab) / ab.sqrt() * likelihood_score(operator, x, y, ab)
        x = ancestral_step(model, x, x0, ab, ab_prev_all[i], generators, last=last, v=v)
        if not last:
            t_next, ab_next = timesteps[i + 1], ab_all[i + 1]
            x = _langevin(model, x, t_next, ab_next, y, operator, generators, corrector_steps, corrector_size)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


def _langevin(
    model: Any,
    x: Tensor,
    t: Tensor,
    ab: Tensor,
    y: Tensor,
    operator: Any,
    generators: Sequence[torch.Generator],
    steps: int,
    size: float,
) -> Tensor:
    """``steps`` Langevin steps on p_t(x_t | y) at level t (Jalal et al. 2021, Alg. 1 inner loop, VP form)."""
    alpha = size * (1 - ab)
    for _ in range(steps):
        score = model.score(x, t) + likelihood_score(operator, x, y, ab)
        x = x + alpha * score + (2 * alpha).sqrt() * per_image_noise(generators, x)
    return x
