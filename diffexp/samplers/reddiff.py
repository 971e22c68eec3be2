"""Regularisation by denoising diffusion, RED-diff (Mardani, Song, Kautz & Vahdat, ICLR 2024, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, grid_alphas, require_measurement
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import PositiveFloat


def reddiff_gradient(operator: Any, mu: Tensor, y: Tensor, eps_hat: Tensor, eps: Tensor, lam_t: Tensor) -> Tensor:
    """∇_μ of RED-diff's per-image loss ℓ(μ) = ‖y − A(μ)‖²/(2m) + λ_t·⟨sg(ε̂ − ε), μ⟩/n:
    Jᵀ(A(μ) − y)/m + λ_t(ε̂ − ε)/n (m, n: the sizes of y and μ per image, the authors' means over pixels), Jᵀ the
    operator's ``vjp`` at μ (the explicit Aᵀ for a linear A, bit-identical; autograd through A otherwise).

    sg is the stop-gradient: ε̂ = ε(x_t, t) enters as a constant, no backpropagation through the UNet.
    """
    m, n = y[0].numel(), mu[0].numel()
    return operator.vjp(mu, operator(mu) - y) / m + lam_t * (eps_hat - eps) / n


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"differentiable"}),
    # Gaussian noise only: its loss ‖y − A(μ)‖²/(2σ_y²) is the Gaussian data term
    noise=frozenset({"gaussian"}),
    network_calls=per_step,
    sampling_steps=per_step,
)


@torch.no_grad()
def reddiff(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    lam: PositiveFloat = 0.05,
    lr: PositiveFloat = 0.5,
) -> Tensor:
    """RED-diff: fit q(x0 | y) = N(μ, σ²I), σ → 0, to the posterior by minimising, with Adam over μ,

        ℓ(μ) = ‖y − Aμ‖²/(2m) + λ_t·⟨sg(ε(x_t, t) − ε), μ⟩/n,   x_t = sqrt(ᾱ_t)·μ + sqrt(1−ᾱ_t)·ε,

    one Adam step (β = (0.9, 0.99), as the authors' code) per t of ``timesteps`` from high to low, a fresh
    ε ~ N(0, I) each (Algorithm 1: the stochastic form of the paper's score-matching regulariser, whose
    gradient is E[λ_t(ε(x_t, t) − ε)]), and λ_t = λ·sqrt((1−ᾱ_t)/ᾱ_t) = λ/SNR_t (the paper's inverse-SNR
    weighting, the code's ``denoise_term_weight: linear``). The paper's 1/(2σ_y²) on the data term is
    absorbed into λ (the best λ here grows with σ_y²: 0.05 at σ_y = 0.05, 4 at 0.4) and the means over
    pixels (/m, /n) follow the authors' code (``obs_weight`` 1, ``lam`` their ``grad_term_weight``); losses are summed over images, so each image has its own Adam state and an
    image's result does not depend on its batch. μ starts at A⁺y (the authors' init; ``x`` is only a shape), or
    at the operator's ``baseline(y)`` for one without ``pinv`` (a nonlinear A); the gradient is
    ``reddiff_gradient`` (``operator.vjp``: the explicit adjoint for a linear A, no autograd through the UNet). Returns the final μ: a MAP-like
    point estimate, not a posterior sample.
    """
    require_measurement("reddiff", y, operator)
    if lam <= 0:
        raise ValueError(f"sampler.lam={lam} must be > 0 (the weight of the diffusion regulariser)")
    if lr <= 0:
        raise ValueError(f"sampler.lr={lr} must be > 0 (Adam's learning rate)")
    ab_all, _ = grid_alphas(model, timesteps, x)
    start = operator.pinv(y) if "pinv" in operator.capabilities else operator.baseline(y)
    mu = start.to(x.dtype).clone()
    optimizer = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99))
    check = FiniteCheck("reddiff", f"sampler.lr={lr} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab = ab_all[i]
        eps = per_image_noise(generators, mu)
        x_t = ab.sqrt() * mu + (1 - ab).sqrt() * eps
        eps_hat = model.eps(x_t, t)
        mu.grad = reddiff_gradient(operator, mu, y, eps_hat, eps, lam * ((1 - ab) / ab).sqrt())
        optimizer.step()
        check(i, x=x_t, x0=mu)
        if callback is not None:
            callback({"i": i, "t": t, "x": x_t, "x0": mu.clone()})
    return mu
