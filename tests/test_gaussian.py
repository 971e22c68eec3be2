"""The Gaussian-prior oracle: ε*, x̂0 and the score against independent Gaussian algebra; the dense
operator matrix and the exact posterior; DDPM sampling from the oracle reproduces its prior."""

import pytest
import torch
from diffusers import DDPMScheduler
from torch.distributions import MultivariateNormal

from diffexp.models.diffusion import DiffusionModel
from diffexp.models.gaussian import dense_matrix, gaussian_oracle, posterior
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.super_resolution import SuperResolution
from diffexp.samplers.ddpm import ddpm
from diffexp.models.schedule import respaced_timesteps

SHAPE = (1, 8, 8)
N = 64


def prior(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5
    s2 = 0.05 + torch.rand(SHAPE, generator=g, dtype=torch.float64)
    return mu, s2


def joint_conditional(mu: torch.Tensor, s2: torch.Tensor, ab: float, xt: torch.Tensor) -> tuple:
    """E[ε | x_t] and E[x0 | x_t] by conditioning the joint Gaussian of (x0, ε, x_t) with dense covariances."""
    eye = torch.eye(N, dtype=torch.float64)
    x0_col, eps_col = torch.cat([eye, 0 * eye]), torch.cat([0 * eye, eye])
    lift = torch.cat([x0_col, eps_col, ab**0.5 * x0_col + (1 - ab) ** 0.5 * eps_col], 1)  # (x0, ε) ↦ (x0, ε, x_t)
    cov = lift.T @ torch.block_diag(torch.diag(s2.flatten()), eye) @ lift  # (x0, ε, x_t): 3N × 3N
    mean = torch.cat([mu.flatten(), torch.zeros(N, dtype=torch.float64), ab**0.5 * mu.flatten()])
    gain = cov[: 2 * N, 2 * N :] @ torch.linalg.inv(cov[2 * N :, 2 * N :])
    cond = mean[: 2 * N] + gain @ (xt.flatten() - mean[2 * N :])
    return cond[N:].reshape(SHAPE), cond[:N].reshape(SHAPE), cov[2 * N :, 2 * N :], mean[2 * N :]


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_eps_x0_and_score_are_the_exact_conditional_expectations(t: int) -> None:
    mu, s2 = prior()
    oracle = gaussian_oracle(mu.float(), s2.float())
    ab = float(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod[t])
    xt = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    eps, x0, cov_t, mean_t = joint_conditional(mu.float().double(), s2.float().double(), ab, xt)
    torch.testing.assert_close(oracle.eps(xt[None], t)[0], eps, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(oracle.x0(xt[None], t)[0], x0, rtol=1e-4, atol=1e-6)
    x = xt.flatten().clone().requires_grad_(True)
    MultivariateNormal(mean_t, cov_t).log_prob(x).backward()
    score = oracle.score(xt[None], torch.tensor([t]))[0]
    torch.testing.assert_close(score, x.grad.reshape(SHAPE), rtol=1e-4, atol=1e-6)
    eps_v, v = oracle.eps_v(xt[None].float(), t)
    assert v is None and eps_v.dtype == torch.float32
    torch.testing.assert_close(eps_v.double(), eps[None], rtol=1e-5, atol=1e-6)


def test_oracle_has_the_model_interface_of_the_samplers() -> None:
    oracle = gaussian_oracle(torch.zeros(SHAPE), 0.5)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    assert oracle.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(oracle.alphas_cumprod, reference.double())
    assert (oracle.image_shape, oracle.channels, oracle.sample_size, oracle.num_train_timesteps) == (SHAPE, 1, 8, 1000)
    assert (oracle.variance_type, oracle.prediction_type, oracle.clip_sample) == ("fixed_small", "epsilon", False)
    assert not hasattr(oracle.unet, "config")  # the shape is the oracle's own, no fake diffusers config
    assert torch.equal(oracle.unet.s2, torch.full(SHAPE, 0.5).double())
    with pytest.raises(ValueError, match="GaussianNoisePredictor has no diffusers config: pass image_shape"):
        DiffusionModel(oracle.unet, DDPMScheduler())
    with pytest.raises(ValueError, match="s2 must be positive"):
        gaussian_oracle(torch.zeros(SHAPE), 0.0)


def test_dense_matrix_and_posterior_against_direct_gaussian_conditioning() -> None:
    """posterior() equals conditioning the joint Gaussian of (x0, y) directly (covariance form)."""
    mu, s2 = prior(1)
    op = SuperResolution(SHAPE, [torch.Generator()], 0.1, factor=2)
    a = dense_matrix(op, SHAPE)
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    torch.testing.assert_close((a @ x.reshape(3, -1).T).T, op(x).reshape(3, -1))
    y = op(mu[None])[0] + 0.3
    m, c = posterior(mu, s2, a, 0.1, y)
    s = torch.diag(s2.flatten())
    gain = s @ a.T @ torch.linalg.inv(a @ s @ a.T + 0.01 * torch.eye(a.shape[0], dtype=torch.float64))
    torch.testing.assert_close(m.flatten(), mu.flatten() + gain @ (y.flatten() - a @ mu.flatten()))
    torch.testing.assert_close(c, s - gain @ a @ s)
    with pytest.raises(ValueError, match="one image"):
        dense_matrix(Inpaint(SHAPE, [torch.Generator()] * 2, 0.1, box_size=4), SHAPE)
    with pytest.raises(ValueError, match="sigma_y=0"):
        posterior(mu, s2, a, 0.0, y)


def ddpm_moments(oracle, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and variance of the DDPM chain x_T ~ N(0, I) → x_0 driven by the oracle: every
    step is affine in x_t plus Gaussian noise, so the moments propagate exactly. fixed_small ancestral
    steps plug in x̂0 = E[x0|x_t] and drop its conditional variance, so the chain's variance falls short
    of s² (about 1 % at 1000 steps, 10–35 % at 50)."""
    ac, mu, s2 = oracle.alphas_cumprod, oracle.unet.mu, oracle.unet.s2
    m, v = torch.zeros(SHAPE, dtype=torch.float64), torch.ones(SHAPE, dtype=torch.float64)
    for i, t in enumerate(timesteps.tolist()):
        ab, ab_prev = ac[t], ac[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        gain = ab.sqrt() * s2 / (ab * s2 + 1 - ab)  # x̂0 = μ + gain (x_t − sqrt(ᾱ) μ)
        beta = 1 - ab / ab_prev
        c0, ct = ab_prev.sqrt() * beta / (1 - ab), (ab / ab_prev).sqrt() * (1 - ab_prev) / (1 - ab)
        m = c0 * (mu + gain * (m - ab.sqrt() * mu)) + ct * m
        v = (c0 * gain + ct) ** 2 * v + ((1 - ab_prev) / (1 - ab) * beta if i + 1 < len(timesteps) else 0)
    return m, v


@pytest.mark.parametrize("num_steps", [50, 200, pytest.param(1000, marks=pytest.mark.slow)])
def test_ddpm_sampling_from_the_oracle_matches_its_prior(num_steps: int) -> None:
    """Monte Carlo over 400 chains: the mean is μ, the variance that of the exact chain (≈ s²), within
    4 standard errors of the 64-pixel averages."""
    mu, s2 = prior(2)
    oracle = gaussian_oracle(mu.float(), s2.float())
    n = 400
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    grid = respaced_timesteps(1000, num_steps)
    out = ddpm(oracle, x, timesteps=grid, generators=gens).double()
    chain_mean, chain_var = ddpm_moments(oracle, grid)
    assert (chain_mean - mu).abs().max() < 1e-3  # the chain is unbiased in the mean
    shortfall = {50: (0.10, 0.35), 200: (0.02, 0.10), 1000: (0.0, 0.015)}[num_steps]
    assert shortfall[0] < 1 - (chain_var / s2).mean() < shortfall[1]
    z = (out.mean(0) - chain_mean) / (chain_var / n).sqrt()  # ~N(0, 1) per pixel
    assert z.mean().abs() < 4 / N**0.5 and z.pow(2).mean() < 1 + 4 * (2 / N) ** 0.5
    ratio = out.var(0) / chain_var  # per pixel ~ χ²_{n-1}/(n-1): mean 1, sd sqrt(2/(n-1))
    assert (ratio.mean() - 1).abs() < 4 * (2 / (n - 1) / N) ** 0.5
