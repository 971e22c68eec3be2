"""Coefficients that a wrong sign or a wrong power would change, each against a computation that shares no formula
with the sampler: the Gaussian oracle's closed-form noise predictor and score, dense matrices of the real operators,
the official DiffPIR loop written out, and torchmetrics' KID (issue #22).

The prior is N(μ, s²I) on 1×8×8 images (``diffexp.models.gaussian``), whose exact ε* and score are written out
here; A is ``dense_matrix`` of the operator. Where a step draws noise, the expected value draws the same noise from
copies of the run's per-image generators (``per_image_noise``: one standard normal per image and draw, in order) or,
for a sampler whose result is a random draw, compares the moments of many draws with the exact Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from diffexp.evaluation.fid import kernel_distance
from diffexp.models.gaussian import dense_matrix, gaussian_oracle
from diffexp.models.schedule import respaced_timesteps
from diffexp.operators.blur import Blur
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.super_resolution import SuperResolution
from diffexp.rng import per_image_noise
from diffexp.samplers.daps_exact import daps_exact as daps, ode_x0
from diffexp.samplers.diffpir import diffpir, quad_timesteps
from diffexp.samplers.scoreald import scoreald

SHAPE = (1, 8, 8)
N_PIX = 64
S2 = 0.5  # prior variance
MU = torch.linspace(-0.5, 0.5, N_PIX, dtype=torch.float64).reshape(SHAPE)  # a non-zero prior mean
ORACLE = gaussian_oracle(MU, S2)
AC = ORACLE.alphas_cumprod.double()  # the schedule (data, not a formula under test)


def _op(name: str, sigma_y: float) -> torch.nn.Module:
    g = [torch.Generator().manual_seed(0)]  # one image's operator, used for every row (box mask, fixed kernel)
    return {
        "identity": lambda: Identity(SHAPE, g, sigma_y),
        "inpaint": lambda: Inpaint(SHAPE, g, sigma_y, mask="box", box_size=4),
        "sr2": lambda: SuperResolution(SHAPE, g, sigma_y, factor=2),
        "blur_circular": lambda: Blur(SHAPE, g, sigma_y, kernel_size=3, std=1.0, padding="circular"),
    }[name]().double()


def _gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def eps_star(x: Tensor, ab: Tensor | float) -> Tensor:
    """E[ε | x_t] of the prior N(μ, s²I): sqrt(1−ᾱ)(x − sqrt(ᾱ)μ)/(ᾱs² + 1 − ᾱ)."""
    ab = torch.as_tensor(ab, dtype=torch.float64)
    return (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S2 + 1 - ab)


def score_star(x: Tensor, ab: Tensor | float) -> Tensor:
    """∇ log p_t(x) of the prior's marginal N(sqrt(ᾱ)μ, (ᾱs² + 1 − ᾱ)I)."""
    ab = torch.as_tensor(ab, dtype=torch.float64)
    return -(x - ab.sqrt() * MU) / (ab * S2 + 1 - ab)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _measurement(op: torch.nn.Module, n: int, seed: int = 7) -> tuple[Tensor, Tensor]:
    """x_T-like start and y = A x_true + σ_y n for one image, repeated over ``n`` rows."""
    g = torch.Generator().manual_seed(seed)
    x_true = MU + S2**0.5 * torch.randn(1, *SHAPE, generator=g, dtype=torch.float64)
    clean = op(x_true)
    y = clean + op.sigma_y * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return x_true, y.expand(n, *y.shape[1:]).contiguous()


# ---------------------------------------------------------------- DiffPIR


def official_diffpir(
    x: Tensor, y: Tensor, a: Tensor, sigma_y: float, lam: float, zeta: float, ts: list[int],
    generators: list[torch.Generator], *, prox_last: bool,
) -> tuple[Tensor, list[Tensor]]:
    """The loop of the official ``main_ddpir_deblur.py`` (model_out_type ``pred_xstart``, η = 0, iter_num_U = 1)
    on the oracle, with its data step written densely in its own [0, 1] units:

        sigma = noise_level_img (σ_y/2: its y gets noise_level_img·2 in [-1, 1]);  rhos = λ·sigma²/σ̄_t²
        x0 = pred_xstart;  x0_p = x0/2 + 0.5;  x0_p = argmin ‖y01 − A u‖² + rho‖u − x0_p‖²;  x0 = 2·x0_p − 1
        eps = (x − sqrt(ᾱ_t)·x0)/sqrt(1−ᾱ_t)
        x = sqrt(ᾱ_{t−1})·x0 + sqrt(1−ζ)·sqrt(1−ᾱ_{t−1})·eps + sqrt(ζ)·sqrt(1−ᾱ_{t−1})·z

    The official code skips the data step and the update at the last step; ``prox_last`` adds the data step
    there (our default). Returns the last step's x0 and x after every step but the last.
    """
    sigma = sigma_y / 2
    y01 = (_rows(y) + (a @ torch.ones(N_PIX, dtype=torch.float64))) / 2  # A x01 + noise/2 with x01 = (x + 1)/2
    states = []
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        ab = AC[t]
        x0 = (x - (1 - ab).sqrt() * eps_star(x, ab)) / ab.sqrt()
        if not last or prox_last:
            rho = lam * sigma**2 / ((1 - ab) / ab)
            x0_p = _rows(x0) / 2 + 0.5
            u = torch.linalg.solve(a.T @ a + rho * torch.eye(N_PIX, dtype=torch.float64), (y01 @ a + rho * x0_p).T).T
            x0 = (2 * u - 1).reshape(x.shape)
        if last:
            return x0, states
        ab_prev = AC[ts[i + 1]]
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        z = per_image_noise(generators, x)
        x = ab_prev.sqrt() * x0 + math.sqrt(1 - zeta) * (1 - ab_prev).sqrt() * eps + math.sqrt(zeta) * (1 - ab_prev).sqrt() * z
        states.append(x)
    raise AssertionError("empty grid")


def official_quad_grid(num_train_timesteps: int, iter_num: int) -> list[int]:
    """``skip_type == "quad"`` of ``main_ddpir_*.py``: the t of each step (``sigmas[seq[i]]`` is the noise level of
    t = T − 1 − seq[i], found again by ``find_nearest``)."""
    seq = np.sqrt(np.linspace(0, num_train_timesteps**2, iter_num))
    seq = [int(s) for s in list(seq)]
    seq[-1] = seq[-1] - 1
    return [num_train_timesteps - 1 - s for s in seq]


def test_diffpir_quad_grid_is_the_official_one() -> None:
    for n in (2, 10, 20, 100):
        assert quad_timesteps(n, 999).tolist() == official_quad_grid(1000, n)
    assert quad_timesteps(1, 999).tolist() == [999]


@pytest.mark.parametrize(
    ("name", "skip_type", "prox_last"),
    [("sr2", "quad", False), ("inpaint", "quad", False), ("blur_circular", "uniform", True)],
)
def test_diffpir_is_the_official_loop_with_the_papers_lambda(name: str, skip_type: str, prox_last: bool) -> None:
    """DiffPIR with ζ = 0.3 < 1 (so ε̂ of eq. 15 enters every step) and the paper's λ = 7 equals the official loop
    written out: its ρ_t in [0, 1] units, its ε̂ sign, its quad grid and no data step at the last step; and with
    the defaults (uniform grid, a data step at the last step too) the same loop on our grid."""
    op = _op(name, 0.1)
    n, lam, zeta = 3, 7.0, 0.3
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = respaced_timesteps(1000, 10)
    ts = official_quad_grid(1000, 10) if skip_type == "quad" else grid.tolist()
    states: list[dict] = []
    out = diffpir(ORACLE, x, timesteps=grid, generators=_gens(n), y=y, operator=op, callback=states.append, lam=lam,
                  zeta=zeta, skip_type=skip_type, prox_last=prox_last, clip_denoised=False)
    expected, xs = official_diffpir(x, y, dense_matrix(op, SHAPE), op.sigma_y, lam, zeta, ts, _gens(n),
                                    prox_last=prox_last)
    assert [int(s["t"]) for s in states] == ts
    for state, x_official in zip(states, xs):
        torch.testing.assert_close(state["x"], x_official, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_diffpir_old_lam_is_the_new_lam_over_4_bit_for_bit() -> None:
    """``lam`` used σ_y in [-1, 1] units before issue #22: old ``lam=x`` (ρ = x·σ_y²ᾱ/(1−ᾱ), its loop written
    out with the same building blocks) is the new ``lam=4x``, bit for bit (a power-of-2 factor is exact)."""
    from diffexp.samplers.ddim import mixed_update

    op = _op("blur_circular", 0.1)
    n = 2
    _, y = _measurement(op, n)
    x_start = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = respaced_timesteps(1000, 8)
    for old_lam in (1.0, 0.3, 7.0):
        x, gens = x_start, _gens(n)
        for i, t in enumerate(grid):
            ab = AC[t]
            ab_prev = AC[grid[i + 1]] if i + 1 < len(grid) else torch.ones((), dtype=torch.float64)
            x0 = op.prox(ORACLE.x0(x, t), y, rho=old_lam * op.sigma_y**2 * ab / (1 - ab))
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = mixed_update(x0, eps, ab_prev, 0.3, gens, noise=i + 1 < len(grid))
        new = diffpir(ORACLE, x_start, timesteps=grid, generators=_gens(n), y=y, operator=op, lam=4 * old_lam,
                      zeta=0.3, clip_denoised=False)
        assert torch.equal(new, x), old_lam


# ---------------------------------------------------------------- DAPS


def ddim_ode_grid(t: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from t down to 0."""
    if steps == 1:
        return [t]
    return sorted({round(j * t / (steps - 1)) for j in range(steps)}, reverse=True)


def ddim_ode(x: Tensor, ts: list[int]) -> Tensor:
    """Deterministic DDIM (η = 0) with the exact ε*: x̂0 = (x − sqrt(1−ᾱ)ε*)/sqrt(ᾱ), x ← sqrt(ᾱ')x̂0 + sqrt(1−ᾱ')ε*."""
    for k, t in enumerate(ts):
        ab = AC[t]
        ab_next = AC[ts[k + 1]] if k + 1 < len(ts) else torch.ones((), dtype=torch.float64)
        eps = eps_star(x, ab)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x0


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_daps_ode_x0_is_ddim_on_the_exact_noise_predictor(steps: int) -> None:
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = torch.tensor(ddim_ode_grid(600, steps))
    torch.testing.assert_close(ode_x0(ORACLE, x, grid, False), ddim_ode(x, grid.tolist()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["inpaint", "sr2"])
def test_daps_one_level_draws_x0_from_the_gaussian_with_r2_of_the_paper(name: str) -> None:
    """One annealing level at t = 300 with a 3-step ODE: x0 ~ N(x0; x̂0, r_t²I)·N(y; A x0, τ²I) with
    r_t² = (1−ᾱ_t)/ᾱ_t (σ_t² of the paper's VE form) and x̂0 the DDIM ODE from x_t: the mean and per-pixel
    variance of 4000 draws against the dense Gaussian C = (I/r² + AᵀA/τ²)⁻¹, m = C(x̂0/r² + Aᵀy/τ²).
    r_t² = 1−ᾱ_t instead would shrink the unobserved pixels' variance to 0.4×."""
    op = _op(name, 0.2)
    n, t, tau = 4000, 300, 0.2
    x_true, y = _measurement(op, n)
    ab = AC[t]
    x_t = ab.sqrt() * x_true + (1 - ab).sqrt() * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(4),
                                                              dtype=torch.float64)
    x0 = daps(ORACLE, x_t.expand(n, *SHAPE).contiguous(), timesteps=torch.tensor([t]), generators=_gens(n), y=y,
              operator=op, ode_steps=3, langevin_steps=0, tau=tau, clip_denoised=False)
    a = dense_matrix(op, SHAPE)
    x0_hat = _rows(ddim_ode(x_t, ddim_ode_grid(t, 3)))[0]
    r2 = (1 - ab) / ab
    cov = torch.linalg.inv(torch.eye(N_PIX, dtype=torch.float64) / r2 + a.T @ a / tau**2)
    mean = cov @ (x0_hat / r2 + a.T @ _rows(y)[0] / tau**2)
    samples = _rows(x0)
    z = (samples.mean(0) - mean).abs() / (cov.diagonal() / n).sqrt()
    ratio = samples.var(0) / cov.diagonal()
    assert z.max() < 4.5 and z.mean() < 1.2, (z.mean(), z.max())
    assert abs(float(ratio.mean()) - 1) < 0.03 and float((ratio - 1).abs().max()) < 0.12, ratio


def test_daps_renoises_x0_to_the_next_level() -> None:
    """x_{t'} = sqrt(ᾱ_{t'})·x0 + sqrt(1−ᾱ_{t'})·ε (the paper's x0 + σ_{t'}ε in VP units): over 2000 draws the
    residual (x_{t'} − sqrt(ᾱ_{t'})x0)/sqrt(1−ᾱ_{t'}) is standard normal and uncorrelated with x0."""
    op = _op("inpaint", 0.2)
    n = 2000
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    states: list[dict] = []
    daps(ORACLE, x, timesteps=torch.tensor([300, 100]), generators=_gens(n), y=y, operator=op,
         callback=states.append, ode_steps=2, langevin_steps=0, tau=0.2, clip_denoised=False)
    ab_next = AC[100]
    x0, x_next = states[0]["x0"], states[0]["x"]
    residual = ((x_next - ab_next.sqrt() * x0) / (1 - ab_next).sqrt()).flatten()
    x0c = (x0 - x0.mean(0)).flatten()  # per-pixel centred
    corr = float((residual * x0c).mean() / (residual.std() * x0c.std()))
    assert abs(float(residual.mean())) < 0.02 and abs(float(residual.var()) - 1) < 0.02 and abs(corr) < 0.02, (
        float(residual.mean()), float(residual.var()), corr)


# ---------------------------------------------------------------- ScoreALD


@pytest.mark.parametrize("name", ["inpaint", "sr2", "blur_circular"])
def test_scoreald_corrector_is_langevin_on_the_dense_posterior_score(name: str) -> None:
    """The corrector after the step to t' (one step, size c): x ← x + α(∇log p_t'(x) + ∇log p(y | x)) + sqrt(2α)z,
    α = c(1−ᾱ_t'), with the oracle's exact score and the dense likelihood score
    Aᵀ(σ_y²I + γ²AAᵀ)⁻¹(y − A x/sqrt(ᾱ))/sqrt(ᾱ), γ² = (1−ᾱ)/ᾱ, on an operator whose AAᵀ is not the identity.
    The state before the corrector is the same run without it (the ancestral noise is drawn first)."""
    op = _op(name, 0.1)
    n, size, grid = 3, 0.7, torch.tensor([500, 300])
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    runs = {}
    for k in (0, 1):
        states: list[dict] = []
        scoreald(ORACLE, x, timesteps=grid, generators=_gens(n), y=y, operator=op, callback=states.append,
                 step_size=1.0, corrector_steps=k, corrector_size=size, clip_denoised=False)
        runs[k] = states[0]["x"]
    gens = _gens(n)
    per_image_noise(gens, x)  # the ancestral step's noise
    z = per_image_noise(gens, x)
    ab = AC[300]
    a = dense_matrix(op, SHAPE)
    gamma2 = (1 - ab) / ab
    prec = torch.linalg.inv(op.sigma_y**2 * torch.eye(a.shape[0], dtype=torch.float64) + gamma2 * a @ a.T)
    before = runs[0]
    lik = ((_rows(y) - _rows(before) @ a.T / ab.sqrt()) @ prec @ a / ab.sqrt()).reshape(before.shape)
    alpha = size * (1 - ab)
    expected = before + alpha * (score_star(before, ab) + lik) + (2 * alpha).sqrt() * z
    torch.testing.assert_close(runs[1], expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- KID


def test_kid_with_random_subsets_matches_torchmetrics() -> None:
    """KID's mean and std over random subsets smaller than both sets, against torchmetrics'
    KernelInceptionDistance fed the same features (an identity feature extractor) and the same random draws
    (torchmetrics draws its permutations from the global generator, real set first; seeded like ours)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 16, generator=g, dtype=torch.float64)
    b = 0.8 * torch.randn(30, 16, generator=g, dtype=torch.float64) + 0.3
    ours = kernel_distance(a, b, subsets=25, subset_size=12, seed=3)
    assert ours["subset_size"] == 12 and ours["subsets"] == 25
    with pytest.warns(UserWarning, match="will save all extracted features"):
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=25, subset_size=12)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        mean, std = metric.compute()
    assert ours["mean"] == pytest.approx(float(mean), rel=1e-9, abs=1e-12)
    assert ours["std"] == pytest.approx(float(std), rel=1e-9, abs=1e-12)
    assert float(std) > 0.05 * abs(float(mean))  # the subsets differ: the std is not 0 by construction
