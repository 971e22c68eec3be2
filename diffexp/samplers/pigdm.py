"""Pseudoinverse-guided diffusion (ΠGDM; Song, Vahdat, Mardani & Kautz, ICLR 2023, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.ddim import ddim_sigma, ddim_update
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import NonNegativeFloat, PositiveFloat

# ``consistent``: our Tweedie-consistent form (the default); ``official``: NVlabs/RED-diff ``algos/pgdm.py``
Guidance = Literal["consistent", "official"]
GUIDANCE = get_args(Guidance)


def pigdm_guidance(model: Any, x: Tensor, t: Tensor, y: Tensor, operator: Any, ab: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂0, g) with g = ((y − A x̂0)ᵀ(r_t²AAᵀ + σ_y²I)⁻¹ A ∂x̂0/∂x_t)ᵀ (ΠGDM eq. 8), r_t² = 1 − ᾱ_t.

    g is ∇_{x_t} log p(y | x_t) when p(x0 | x_t) = N(x̂0, r_t²I) (eq. 6; r_t² = σ̄_t²/(1+σ̄_t²) for data of
    unit variance, σ̄_t² = (1−ᾱ_t)/ᾱ_t). One vector–Jacobian product through the UNet; nothing is kept.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        x0 = model.x0(x_in, t)
        weighted = operator.solve_aat(y - operator(x0.detach()), aat_weight=1 - ab, noise_var=operator.sigma_y**2)
        (g,) = torch.autograd.grad(x0, x_in, grad_outputs=operator.adjoint(weighted))
    return x0.detach(), g


def pigdm_official_guidance(
    model: Any, x: Tensor, t: Tensor, y: Tensor, operator: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """(x̂0, ε, g) with g = (∂x̂0/∂x_t)ᵀ(A⁺y − A⁺A x̂0), the ``grad_term`` of NVlabs/RED-diff ``algos/pgdm.py``.

    The official code's ``mat = H_pinv(y_0) − H_pinv(H(x0_pred))`` (noise-free: no σ_y, no r_t²) and
    ``grad_term = autograd.grad((mat.detach() * x0_pred).sum(), xt)``; A⁺y − A⁺A x̂0 = A⁺(y − A x̂0) as A⁺ is
    linear (``operator.pinv``; for blur the regularised one of ``Blur.pinv``). ε is the network's own
    (unguided) prediction and x̂0 its Tweedie estimate, from the same single UNet call.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        eps = model.eps(x_in, t)
        x0 = model.x0_from_eps(x_in, t, eps)
        mat = operator.pinv(y - operator(x0.detach()))
        (g,) = torch.autograd.grad(x0, x_in, grad_outputs=mat)
    return x0.detach(), eps.detach(), g


@sampler(
    measurement=True,
    unet_grad=True,
    operator=frozenset({"linear", "adjoint", "pinv", "solve_aat"}),  # pinv: guidance=official
    # Gaussian noise only: (r_t²AAᵀ + σ_y²I)⁻¹: the Gaussian likelihood of y given x̂0
    noise=frozenset({"gaussian"}),
    network_calls=per_step,
    sampling_steps=per_step,
)


@torch.no_grad()
def pigdm(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    step_size: PositiveFloat = 1.0,
    eta: NonNegativeFloat = 1.0,
    clip_denoised: bool | None = None,
    guidance: Guidance = "consistent",
) -> Tensor:
    """ΠGDM (Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided Diffusion Models for Inverse Problems",
    ICLR 2023, Algorithm 1) on the DDIM chain (η = ``eta``), in one of two forms (``guidance``):

    ``consistent`` (the default): the DDIM update of the guided denoiser x̂0|y = x̂0 + w·(1−ᾱ_t)/sqrt(ᾱ_t)·g.
    g (``pigdm_guidance``) approximates ∇ log p(y | x_t) (eq. 8, with σ_y and r_t² = 1 − ᾱ_t); Tweedie's
    formula for p(x_t | y) adds (1−ᾱ_t)/sqrt(ᾱ_t)·g to x̂0, and ε is re-derived from the guided x̂0,
    ε|y = (x_t − sqrt(ᾱ_t)x̂0|y)/sqrt(1−ᾱ_t), so the step is DDIM on the conditional score (with η = 1:
    DDPM). This form makes w = ``step_size`` = 1 the nominal value, exact when p(x0 | x_t) is Gaussian with
    covariance r_t²I (an isotropic unit-variance Gaussian prior).

    ``official``: the authors' code, NVlabs/RED-diff ``algos/pgdm.py`` (``PGDM.sample`` with its default
    ``_configs/algo/pgdm.yaml``: ``awd: True``, ``cond_awd: False``, ``mcg: False``). With s the next level
    (ᾱ_s = ᾱ_{t-1}, 1 after the last step), ε the network's unguided noise prediction and x̂0 its Tweedie
    estimate (``pigdm_official_guidance``), g_off = (∂x̂0/∂x_t)ᵀ(A⁺y − A⁺A x̂0), noise-free (no σ_y, no
    r_t²), and

        x_s = sqrt(ᾱ_s)·x̂0 + sqrt(1 − ᾱ_s − σ_t²)·ε + σ_t·z + w·sqrt(ᾱ_s)·sqrt(ᾱ_t)·g_off,

    σ_t = η·sqrt((1−ᾱ_t/ᾱ_s)(1−ᾱ_s)/(1−ᾱ_t)) (their c1, c2 = sqrt(1−ᾱ_s−c1²)), w = ``step_size`` (their
    ``grad_term_weight``, default 1). How it differs from ``consistent``: the guidance is added to x_s, not to
    x̂0, and ε is not re-derived from a guided x̂0, so the shift is w·sqrt(ᾱ_s)·sqrt(ᾱ_t)·g_off rather than
    the DDIM-consistent (sqrt(ᾱ_s) − sqrt(1−ᾱ_s−σ_t²)·sqrt(ᾱ_t/(1−ᾱ_t)))·w·(1−ᾱ_t)/sqrt(ᾱ_t)·g; and g_off
    uses A⁺ (the σ_y = 0, r_t²-free form of (r_t²AAᵀ + σ_y²I)⁻¹), so w has no nominal value and is tuned
    per task. Their default is η = 0 (``eta: 0.0``); our ``eta`` key (default 1) applies to both forms, so
    set ``sampler.eta=0`` to reproduce it. Not reproduced here: their start from sqrt(ᾱ_T)·A⁺y + noise
    (``PGDM.initialize``; ours starts from the run's x_T), and they never clip x̂0 (``clip_denoised=false``
    reproduces that; ``clip_denoised`` clips the x̂0 of the update, never ε).

    No graph is kept across steps. One UNet call (and one vector–Jacobian product) per step in both forms.
    """
    require_measurement("pigdm", y, operator)
    if step_size <= 0:
        raise ValueError(f"sampler.step_size={step_size} must be > 0")
    if eta < 0:
        raise ValueError(f"sampler.eta={eta} must be >= 0")
    if guidance not in GUIDANCE:
        raise ValueError(f"sampler.guidance={guidance!r} must be one of {', '.join(GUIDANCE)}")
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    check = FiniteCheck("pigdm", f"sampler.step_size={step_size} too large", timesteps, x.device)
    for i, t in enumerate(timesteps):
        ab, ab_prev = ab_all[i], ab_prev_all[i]
        sigma = ddim_sigma(ab, ab_prev, eta)
        noise = eta > 0 and i + 1 < len(timesteps)
        if guidance == "official":
            x0, eps, g = pigdm_official_guidance(model, x, t, y, operator)
            x0 = clip_x0(model, x0, clip_denoised)
            shift = step_size * ab_prev.sqrt() * ab.sqrt() * g  # their grad_term·coeff (awd: True)
            x = ddim_update(x0, eps, ab_prev, sigma, generators, noise=noise) + shift
        else:
            x0, g = pigdm_guidance(model, x, t, y, operator, ab)
            x0 = clip_x0(model, x0 + step_size * (1 - ab) / ab.sqrt() * g, clip_denoised)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = ddim_update(x0, eps, ab_prev, sigma, generators, noise=noise)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
