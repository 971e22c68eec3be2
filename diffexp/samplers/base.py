"""Pieces shared by the samplers: per-image noise, the DDPM posterior step, divergence checks.

Every sampler is a plain function with one signature::

    sampler(model, x, *, timesteps, generators, y=None, operator=None, callback=None, **hparams) -> x0

``timesteps`` is a decreasing grid (``diffexp.models.schedule``), ``generators`` holds one
``torch.Generator`` per image (row of ``x``) so that an image's result never depends on its batch,
and ``callback`` receives ``dict(i, t, x, x0, ...)`` after every step. Samplers do no I/O.

The loops never wait for the device inside a step: schedule coefficients are gathered once per run
(``grid_alphas``) and indexed with Python ints, and ``FiniteCheck`` reads its NaN flag from an
accelerator only every few steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.errors import SamplingDivergedError
from diffexp.models.schedule import previous_alphas_cumprod
from diffexp.rng import per_image_noise

Callback = Callable[[dict[str, Any]], None]


def require_measurement(sampler: str, y: Tensor | None, operator: Any) -> None:
    """Posterior samplers need ``y`` and ``operator``: a clear error for ``task=generate``."""
    if y is None or operator is None:
        raise ValueError(f"sampler={sampler} needs a measurement: use a task with an operator (not task=generate)")


def clip_x0(model: Any, x0: Tensor, clip_denoised: bool | None) -> Tensor:
    """Clamp x̂0 to the model's ``clip_sample_range`` when asked (None: the scheduler's ``clip_sample``)."""
    clip = model.clip_sample if clip_denoised is None else clip_denoised
    return x0.clamp(-model.clip_sample_range, model.clip_sample_range) if clip else x0


def grid_alphas(model: Any, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(ᾱ_t, ᾱ_prev) of every step of the grid, ᾱ_prev = 1 after the last step, in ``like``'s dtype.

    Gathered once per run so that the loop reads step i as ``ab[i]`` (a Python-int index: no sync).
    """
    ac = model.alphas_cumprod
    t = timesteps.to(ac.device)
    return ac[t].to(like.dtype), previous_alphas_cumprod(ac, t).to(like.dtype)


def ancestral_step(
    model: Any,
    x: Tensor,
    x0: Tensor,
    ab: Tensor,
    ab_prev: Tensor,
    generators: Sequence[torch.Generator],
    *,
    last: bool,
    v: Tensor | None = None,
) -> Tensor:
    """One DDPM ancestral step x_t → x_{t-1} (Ho et al. 2020, eqs. 6–7) on a possibly respaced grid.

    μ̃ = sqrt(ᾱ_{t-1})·β_t/(1−ᾱ_t)·x̂0 + sqrt(α_t)·(1−ᾱ_{t-1})/(1−ᾱ_t)·x_t with α_t = ᾱ_t/ᾱ_{t-1},
    β_t = 1 − α_t; σ_t² = β̃_t = (1−ᾱ_{t-1})/(1−ᾱ_t)·β_t (fixed_small), β_t (fixed_large), or for
    learned_range models log σ_t² = v·log β_t + (1−v)·log β̃_t with ``v`` from ``model.eps_v``
    (improved DDPM, Nichol & Dhariwal 2021, eq. 15), β and β̃ those of the grid's steps.
    No noise is added after the ``last`` step (where ᾱ_{t-1} = 1).
    """
    if model.variance_type == "learned_range" and v is None:
        raise ValueError("ancestral_step: a learned_range model needs v (ε, v = model.eps_v(x, t))")
    alpha = ab / ab_prev
    beta = 1 - alpha
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x
    if last:
        return mean
    if model.variance_type == "learned_range":
        log_beta_tilde = ((1 - ab_prev) / (1 - ab) * beta).clamp(min=1e-20).log()
        std = (0.5 * (v * beta.log() + (1 - v) * log_beta_tilde)).exp()
        return mean + std * per_image_noise(generators, x)
    if model.variance_type == "fixed_small":
        var = ((1 - ab_prev) / (1 - ab) * beta).clamp(min=1e-20)
    else:
        var = beta
    return mean + var.sqrt() * per_image_noise(generators, x)


def check_finite(sampler: str, i: int, t: Tensor, hint: str, **tensors: Tensor) -> None:
    """Raise ``SamplingDivergedError`` naming the sampler, step and likely cause if any tensor is not finite."""
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise SamplingDivergedError(
                f"{sampler}: non-finite values in {name} at step {i} (t={int(t)}); likely cause: {hint}"
            )


class FiniteCheck:
    """Per-step NaN/Inf detection that names the first bad step, without a host↔device sync per step.

    With ``every=1`` (the default on CPU, where there is no device to wait for) each step is checked
    at once by ``check_finite``. Otherwise (default 25 on accelerators) the step's verdict is folded
    into a device-side record of the first bad step, read every ``every`` steps and after the last
    one: sampling stops at most ``every - 1`` steps late, and the error still names the step (and
    tensor) where the values first went bad.

    Args:
        sampler: the sampler's name, for the message.
        hint: the likely cause, for the message.
        timesteps: the run's grid (step i is at timestep ``timesteps[i]``).
        device: where the checked tensors live.
        every: steps between two reads of the flag; None: 1 on CPU, 25 elsewhere.
    """

    def __init__(
        self, sampler: str, hint: str, timesteps: Tensor, device: torch.device, every: int | None = None
    ) -> None:
        self.sampler, self.hint, self.timesteps = sampler, hint, timesteps
        self.every = every if every is not None else 1 if device.type == "cpu" else 25
        if self.every < 1:
            raise ValueError(f"every={self.every} must be >= 1")
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_tensors: Tensor | None = None

    def __call__(self, i: int, **tensors: Tensor) -> None:
        if self.every == 1:
            check_finite(self.sampler, i, self.timesteps[i], self.hint, **tensors)
            return
        bad = ~torch.stack([torch.isfinite(v).all() for v in tensors.values()])
        new = (self.first_bad < 0) & bad.any()
        self.first_bad = torch.where(new, i, self.first_bad)
        self.bad_tensors = bad if self.bad_tensors is None else torch.where(new, bad, self.bad_tensors)
        if (i + 1) % self.every == 0 or i + 1 == len(self.timesteps):
            self._raise_if_bad(list(tensors))

    def _raise_if_bad(self, names: list[str]) -> None:
        step = int(self.first_bad)  # the only host↔device sync, once per ``every`` steps
        if step >= 0:
            name = next(n for n, b in zip(names, self.bad_tensors.tolist()) if b)
            raise SamplingDivergedError(
                f"{self.sampler}: non-finite values in {name} at step {step} (t={int(self.timesteps[step])}); "
                f"likely cause: {self.hint}"
            )
