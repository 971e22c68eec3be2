"""An exact-posterior test bed: a diffusion "model" of a Gaussian prior, with its analytic noise predictor.

Prior x0 ~ N(μ, S), S = diag(s²), on small images (e.g. 1×8×8). With x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε,
(x_t, ε) is jointly Gaussian and the MMSE noise predictor is exact (what a perfectly trained network
would output):

    ε*(x_t, t) = E[ε | x_t] = sqrt(1−ᾱ_t)·(ᾱ_t S + (1−ᾱ_t) I)⁻¹ (x_t − sqrt(ᾱ_t) μ)          (elementwise).

For y = A x0 + σ_y n the posterior is N(m, C) with C = (S⁻¹ + AᵀA/σ_y²)⁻¹ and m = C(S⁻¹μ + Aᵀy/σ_y²)
(``posterior``), A built densely from the real operator (``dense_matrix``). A sampler is then checked
by comparing the mean and per-pixel variance of its samples of one y with m and diag(C).

``gaussian_oracle(mu, s2)`` returns a real ``diffexp.models.diffusion.DiffusionModel`` whose "UNet" is
``GaussianNoisePredictor`` (ε* in float64, returned in x's dtype) and whose schedule is diffusers'
linear-β DDPM schedule (T = 1000, β from 1e-4 to 0.02, fixed_small, no clipping), as ``model=tiny``.
So everything the samplers use (``eps``, ``eps_v`` → (ε*, None), ``x0``, ``x0_from_eps``, ``score``,
``alpha_bar``, ``alphas_cumprod``, ``variance_type``, ``clip_sample``, ``image_shape``, ...) is the
production wrapper's own code; the predictor has no diffusers config, so the oracle passes its
``image_shape`` (that of μ). The prior is ``model.unet.mu`` and ``model.unet.s2``.

Example::

    model = gaussian_oracle(mu, s2)                       # mu (C, H, W); s2 like mu, or a float
    A = dense_matrix(operator, model.image_shape)         # operator built for one image
    m, C = posterior(mu, s2, A, operator.sigma_y, y)      # m shaped like mu, C (n, n), float64
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor, nn

from diffexp.models.diffusion import DiffusionModel


class GaussianNoisePredictor(nn.Module):
    """ε*(x_t, t) of the prior N(μ, diag(s²)), called like a diffusers UNet: ``forward(x, t).sample``.

    Args:
        mu: prior mean, shaped (C, H, W) with H = W.
        s2: prior variances, shaped like ``mu`` or a positive float (isotropic).
        alphas_cumprod: ᾱ of the schedule, indexed by the timesteps the model is called at.
    """

    def __init__(self, mu: Tensor, s2: Tensor | float, alphas_cumprod: Tensor) -> None:
        super().__init__()
        if mu.ndim != 3 or mu.shape[1] != mu.shape[2]:
            raise ValueError(f"mu has shape {tuple(mu.shape)}; expected (C, H, W) with H = W")
        s2 = torch.as_tensor(s2, dtype=torch.float64).expand(mu.shape)
        if not bool((s2 > 0).all()):
            raise ValueError(f"s2 must be positive everywhere; its minimum is {float(s2.min())}")
        self.register_buffer("mu", mu.to(torch.float64).clone())
        self.register_buffer("s2", s2.clone())
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()  # a plain CPU attribute: never moved

    def forward(self, x: Tensor, t: Tensor) -> UNet2DOutput:
        """ε* = sqrt(1−ᾱ_t)(ᾱ_t S + (1−ᾱ_t)I)⁻¹(x_t − sqrt(ᾱ_t)μ), computed in float64."""
        ab = self.alphas_cumprod[t.cpu()].to(x.device).reshape(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * self.mu) / (ab * self.s2 + 1 - ab)
        return UNet2DOutput(sample=eps.to(x.dtype))


def gaussian_oracle(
    mu: Tensor, s2: Tensor | float, *, num_train_timesteps: int = 1000, name: str = "gaussian-oracle"
) -> DiffusionModel:
    """A ``DiffusionModel`` of the prior N(μ, diag(s²)) with the exact noise predictor, linear-β schedule."""
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=False)
    predictor = GaussianNoisePredictor(mu, s2, scheduler.alphas_cumprod)
    c, h, w = mu.shape
    return DiffusionModel(predictor, scheduler, name=name, image_shape=(c, h, w))


@torch.no_grad()
def dense_matrix(operator: nn.Module, image_shape: Sequence[int]) -> Tensor:
    """A as a dense float64 matrix (m, n): column i is the flattened ``operator(e_i)``.

    The operator must serve one image (its per-image mask or kernel is that image's).
    """
    if getattr(operator, "batch_size", 1) != 1:
        raise ValueError(f"dense_matrix needs an operator built for one image, not a batch of {operator.batch_size}")
    n = 1
    for d in image_shape:
        n *= d
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *image_shape)
    return operator(basis).reshape(n, -1).T.contiguous()


def posterior(mu: Tensor, s2: Tensor | float, a: Tensor, sigma_y: float, y: Tensor) -> tuple[Tensor, Tensor]:
    """The exact posterior N(m, C) of x0 ~ N(μ, diag(s²)) given y = A x0 + σ_y n.

    C = (S⁻¹ + AᵀA/σ_y²)⁻¹, m = C(S⁻¹μ + Aᵀy/σ_y²); m is shaped like ``mu``, C is (n, n), float64.
    """
    if sigma_y <= 0:
        raise ValueError(f"sigma_y={sigma_y} must be > 0 for a Gaussian likelihood")
    mu64 = mu.to(torch.float64).flatten()
    s2 = torch.as_tensor(s2, dtype=torch.float64).expand(mu.shape).flatten()
    a = a.to(torch.float64)
    if a.shape[1] != mu64.numel() or y.numel() != a.shape[0]:
        raise ValueError(f"A is {tuple(a.shape)} but mu has {mu64.numel()} and y {y.numel()} entries")
    precision = torch.diag(1 / s2) + a.T @ a / sigma_y**2
    cov = torch.linalg.inv(precision)
    cov = (cov + cov.T) / 2
    mean = cov @ (mu64 / s2 + a.T @ y.to(torch.float64).flatten() / sigma_y**2)
    return mean.reshape(mu.shape), cov
