"""The authors' DAPS (``sampler=daps``) against its official loop written out (issue #22).

The reference below follows the structure of zhangbingliang2019/DAPS (``sampler.py``: ``DAPS.sample``;
``cores/scheduler.py``: ``EDMScheduler``, ``DiffusionPFODE`` with Euler; ``cores/mcmc.py``: ``MCMCSampler`` with
``langevin`` and ``prior_solver=gaussian``) and shares no formula with ``diffexp/samplers/daps.py``: the EDM
time-step lambda of the scheduler, the EDM ODE derivative (x − D)/σ with D the Gaussian prior's closed-form
posterior mean, autograd of the authors' loss ‖A(x) − y‖², their three score terms and their lr multiplier.
The one shared convention is ours: each σ is rounded to the model's nearest level (numpy argmin here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from diffexp.models.gaussian import gaussian_oracle
from diffexp.operators.blur import Blur
from diffexp.operators.hdr import HDR
from diffexp.operators.super_resolution import SuperResolution
from diffexp.rng import per_image_noise
from diffexp.samplers.daps import daps

SHAPE = (1, 8, 8)
S2 = 0.5
MU = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64).reshape(SHAPE)
ORACLE = gaussian_oracle(MU, S2)
SIGMAS = np.sqrt((1 - ORACLE.alphas_cumprod.double().numpy()) / ORACLE.alphas_cumprod.double().numpy())
SETTINGS = {"ode_steps": 3, "langevin_steps": 4, "lr": 2e-4, "lr_min_ratio": 0.05, "tau": 0.05,
            "sigma_max": 20.0, "sigma_min": 0.1, "ode_sigma_min": 0.01, "rho": 7.0}


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + i) for i in range(n)]


def _round(sigma: float) -> float:
    return float(SIGMAS[np.abs(SIGMAS - sigma).argmin()])


def authors_daps(op: torch.nn.Module, x_start: Tensor, y: Tensor, levels: int, gens: list[torch.Generator],
                 ode_steps: int, langevin_steps: int, lr: float, lr_min_ratio: float, tau: float, sigma_max: float,
                 sigma_min: float, ode_sigma_min: float, rho: float) -> Tensor:
    def edm_time_steps(s_max: float, s_min: float, num_steps: int) -> list[float]:
        fn = lambda r: (s_max ** (1 / rho) + r * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho  # noqa: E731
        return [fn(s) for s in np.linspace(0, 1, num_steps + 1)]  # Scheduler: num_steps + 1 points

    sigma_steps = [_round(s) for s in edm_time_steps(sigma_max, sigma_min, levels)[:-1]] + [0.0]
    xt = x_start * sigma_steps[0]  # get_start: randn · prior sigma
    for step in range(levels):
        sigma = sigma_steps[step]
        ode = [_round(s) for s in edm_time_steps(sigma, ode_sigma_min, ode_steps)]
        x = xt
        for s, s_next in zip(ode[:-1], ode[1:]):  # torchdiffeq euler on the fixed grid
            denoised = MU + S2 / (S2 + s**2) * (x - MU)  # D(x; σ) of the prior N(μ, s²I)
            x = x + (s_next - s) * (x - denoised) / s  # EDM eq. 4 with s(t) = 1, σ(t) = t
        x0hat = x
        ratio = step / (levels + 1)  # step / annealing_scheduler.num_steps
        step_lr = (1 + ratio * (lr_min_ratio - 1)) * lr
        x = x0hat.clone()
        for _ in range(langevin_steps):
            leaf = x.detach().requires_grad_(True)
            loss = ((op(leaf) - y) ** 2).flatten(1).sum(-1).sum()
            grad = torch.autograd.grad(loss, leaf)[0]
            score = -grad / tau**2 + (xt - x) / sigma**2 + (x0hat - xt) / sigma**2
            x = x + step_lr * score + math.sqrt(2 * step_lr) * per_image_noise(gens, x)
        x0y = x.detach()
        if step + 1 < levels:
            xt = x0y + per_image_noise(gens, x0y) * sigma_steps[step + 1]
    return x0y


def _problem(op: torch.nn.Module, n: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    x_true = MU + S2**0.5 * torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    with torch.no_grad():
        clean = op(x_true)
    y = clean + op.sigma_y * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return torch.randn(n, *SHAPE, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("name", ["sr2", "blur", "hdr"])
def test_daps_is_the_authors_loop(name: str) -> None:
    """Levels, ODE, Langevin coefficients, lr decay and re-noising against the official structure, on a linear
    pooling, a circular blur and the nonlinear HDR clip (autograd Jacobian). Dropping the loss's factor 2, using
    i/L for the lr ratio, visiting σ_min, returning D instead of the ODE's end or re-noising with the current level
    each changes the result far beyond the tolerance."""
    g = [torch.Generator().manual_seed(0)]
    op = {
        "sr2": lambda: SuperResolution(SHAPE, g, 0.05, factor=2),
        "blur": lambda: Blur(SHAPE, g, 0.05, kernel_size=3, std=1.0, padding="circular"),
        "hdr": lambda: HDR(SHAPE, g, 0.05),
    }[name]().double()
    n, levels = 3, 6
    x, y = _problem(op, n)
    timesteps = torch.arange(levels - 1, -1, -1) * 150 + 100  # only its length (and its first σ, > 20) is read
    ours = daps(ORACLE, x.clone(), timesteps=timesteps, generators=_gens(n), y=y, operator=op, **SETTINGS)
    expected = authors_daps(op, x.clone(), y, levels, _gens(n), **SETTINGS)
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-9)


def test_daps_caps_sigma_max_at_the_first_timestep_and_reports_each_level() -> None:
    op = SuperResolution(SHAPE, [torch.Generator().manual_seed(0)], 0.05, factor=2).double()
    x, y = _problem(op, 2)
    t0 = int(np.abs(SIGMAS - 5.0).argmin())
    states: list[dict] = []
    ours = daps(ORACLE, x.clone(), timesteps=torch.tensor([t0, 10, 5, 0]), generators=_gens(2), y=y, operator=op,
                callback=states.append, **SETTINGS)
    expected = authors_daps(op, x.clone(), y, 4, _gens(2), **{**SETTINGS, "sigma_max": float(SIGMAS[t0])})
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-9)
    assert [s["i"] for s in states] == [0, 1, 2, 3] and int(states[0]["t"]) == t0
    torch.testing.assert_close(states[-1]["x0"], ours)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sigma_min": 200.0}, r"sampler\.sigma_max=20\.0 > sampler\.sigma_min=200\.0 > sampler\.ode_sigma_min=0\.01"),
        ({"ode_sigma_min": 0.5}, r"sampler\.sigma_min=0\.1 > sampler\.ode_sigma_min=0\.5 > 0 must hold"),
    ],
)
def test_daps_refuses_an_unordered_sigma_range(change: dict, message: str) -> None:
    op = SuperResolution(SHAPE, [torch.Generator().manual_seed(0)], 0.05, factor=2).double()
    x, y = _problem(op, 1)
    with pytest.raises(ValueError, match=message):
        daps(ORACLE, x, timesteps=torch.tensor([500, 0]), generators=_gens(1), y=y, operator=op,
             **{**SETTINGS, **change})
