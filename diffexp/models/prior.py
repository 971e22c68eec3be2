"""``Prior``: what samplers and the run need from a diffusion model, whatever network or family is behind it.

Today every prior is a VP (DDPM) model on a discrete grid t = 0..T−1: x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε with
ε ~ N(0, I) (Ho et al. 2020). A later issue generalises the pair (sqrt(ᾱ_t), sqrt(1−ᾱ_t)) to (a_t, b_t).
Images are (C, H, W) in [-1, 1] with H = W. ``DiffusionModel`` (a diffusers UNet and its DDPM schedule) and
``gaussian_oracle`` (the exact noise predictor of a Gaussian prior) implement it.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Prior(Protocol):
    """A denoiser of x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε, called at integer timesteps ``t`` (an int or a (B,)
    long tensor). ``x`` is a batch (B, C, H, W); outputs have its shape and dtype."""

    @property
    def name(self) -> str:
        """A label for logs and ``metrics.json``."""

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t for t = 0..T−1, shape (T,), float64 (float32 on devices without float64), on the model's device."""

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""

    @property
    def channels(self) -> int:
        """C of the images."""

    @property
    def sample_size(self) -> int:
        """H (= W) of the images."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""

    @property
    def variance_type(self) -> str:
        """The reverse-step variance: ``fixed_small`` (β̃_t), ``fixed_large`` (β_t) or ``learned_range``
        (interpolated by the v of ``eps_v``; improved DDPM, Nichol & Dhariwal 2021, eq. 15)."""

    @property
    def clip_sample(self) -> bool:
        """Whether samplers clamp x̂0 to ±``clip_sample_range`` by default."""

    @property
    def clip_sample_range(self) -> float:
        """The bound of that clamp."""

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t shaped (B, 1, 1, 1) in ``like``'s dtype and device."""

    def eps_v(self, x: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor | None]:
        """ε̂(x_t, t) and, for ``learned_range`` models, v ∈ [0, 1] (None otherwise), from one network call."""

    def eps(self, x: Tensor, t: Tensor | int) -> Tensor:
        """The predicted noise ε̂(x_t, t)."""

    def x0_from_eps(self, x: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Tweedie's x̂0 = (x_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t) for a given ε (no network call)."""

    def x0(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Tweedie's x̂0 = E[x0 | x_t]."""

    def score(self, x: Tensor, t: Tensor | int) -> Tensor:
        """∇ log p_t(x_t) = −ε̂/sqrt(1−ᾱ_t)."""

    def prepare(self, *, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool) -> Self:
        """The prior ready for a run: on ``device``, its network under autocast to ``dtype`` unless float32
        (outputs stay in the input's dtype; operators stay float32), in channels_last memory format and
        ``torch.compile``d when asked."""

    def problems(self) -> list[str]:
        """What makes this prior unusable by diffexp (e.g. non-square images), as messages for ``ConfigError``."""
