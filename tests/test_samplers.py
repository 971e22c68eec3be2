"""The guided samplers ScoreALD, ΠGDM, DDNM+, DiffPIR, DAPS and RED-diff against independent computations of their
papers' equations on toy problems (dense matrices, closed-form limits, optimality conditions), plus seeds,
batch independence, σ_y = 0, validation errors and the shipped configs."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_cfg
from diffusers import DDPMScheduler

import diffexp.samplers.ddnm
from diffexp.experiment import run
from diffexp.models.gaussian import dense_matrix, gaussian_oracle
from diffexp.models.diffusion import DiffusionModel, tiny_unet
from diffexp.operators.blur import Blur
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.super_resolution import SuperResolution
from diffexp.rng import per_image_noise
from diffexp.samplers.daps_exact import daps_exact as daps, gaussian_x0_draw, langevin_x0
from diffexp.samplers.ddnm import ddnm, travel_schedule
from diffexp.samplers.diffpir import diffpir
from diffexp.samplers.pigdm import pigdm, pigdm_guidance
from diffexp.samplers.reddiff import reddiff, reddiff_gradient
from diffexp.samplers.scoreald import scoreald
from diffexp.models.schedule import respaced_timesteps
from diffexp.validate import ConfigError, validate

SHAPE = (1, 8, 8)
NEW = [scoreald, pigdm, ddnm, diffpir, daps, reddiff]
T = 600  # a one-step grid at t: the update returns its (guided) x̂0, since ᾱ_prev = 1 after the last step


def _gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def _ops(sigma_y: float, n: int = 1) -> dict[str, torch.nn.Module]:
    g = _gens(n)
    return {
        "identity": Identity(SHAPE, g, sigma_y),
        "inpaint": Inpaint(SHAPE, g, sigma_y, mask="box", box_size=4),
        "sr2": SuperResolution(SHAPE, g, sigma_y, factor=2),
        "blur_circular": Blur(SHAPE, g, sigma_y, kernel_size=3, std=1.0, padding="circular"),
        "blur_reflect": Blur(SHAPE, g, sigma_y, kernel_size=3, std=1.0),
    }


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return DiffusionModel(tiny_unet(8, 1, seed=1), DDPMScheduler(clip_sample=False)).double()


def _xy(op: torch.nn.Module, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    y = op(torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)).double() * 0.5
    return x, y


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2", "blur_circular", "blur_reflect"])
def test_scoreald_step_is_tweedie_shift_by_the_dense_likelihood_score(model, name: str) -> None:
    """out = x̂0 + η(1−ᾱ)/sqrt(ᾱ)·∇_x log N(y; A x/sqrt(ᾱ), σ_y²I + γ²AAᵀ), the gradient by finite
    differences of the dense Gaussian log-density."""
    op = _ops(0.1)[name].double()
    x, y = _xy(op)
    eta = 0.7
    out = scoreald(model, x, timesteps=torch.tensor([T]), generators=_gens(2), y=y, operator=op, step_size=eta)
    ab = model.alphas_cumprod[T]
    a = dense_matrix(op, SHAPE)
    cov = op.sigma_y**2 * torch.eye(a.shape[0], dtype=torch.float64) + (1 - ab) / ab * a @ a.T
    prec = torch.linalg.inv(cov)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        shift = out - model.x0(x, T)
    for i in range(2):
        def loglik(z: torch.Tensor) -> torch.Tensor:
            r = y[i].flatten() - a @ (z[i].flatten() / ab.sqrt())
            return -0.5 * r @ prec @ r
        h = 1e-5
        fd = (loglik(x + h * v) - loglik(x - h * v)) / (2 * h)
        expected = eta * (1 - ab) / ab.sqrt() * fd
        assert (shift[i] * v[i]).sum().item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2", "blur_reflect"])
def test_pigdm_guidance_equals_the_dense_jacobian_formula(model, name: str) -> None:
    """g = (∂x̂0/∂x_t)ᵀ Aᵀ(r_t²AAᵀ + σ_y²I)⁻¹(y − A x̂0), with the Jacobian from torch.func.jacrev and dense A;
    and one ΠGDM step (η = 0, one-step grid) returns x̂0 + w(1−ᾱ)/sqrt(ᾱ)·g."""
    op = _ops(0.1)[name].double()
    x, y = _xy(op)
    ab = model.alphas_cumprod[T]
    x0, g = pigdm_guidance(model, x, torch.tensor(T), y, op, ab)
    a = dense_matrix(op, SHAPE)
    weight = torch.linalg.inv((1 - ab) * a @ a.T + op.sigma_y**2 * torch.eye(a.shape[0], dtype=torch.float64))
    for i in range(2):
        jac = torch.func.jacrev(lambda z: model.x0(z[None], T)[0].flatten())(x[i]).reshape(64, 64)
        expected = jac.T @ a.T @ weight @ (y[i].flatten() - a @ x0[i].flatten())
        # reflect blur solves by conjugate gradients (relative residual 1e-5): compare norms
        assert (g[i].flatten() - expected).norm() <= 1e-3 * expected.norm()
    out = pigdm(model, x, timesteps=torch.tensor([T]), generators=_gens(2), y=y, operator=op, step_size=0.5, eta=0.0)
    torch.testing.assert_close(out, x0 + 0.5 * (1 - ab) / ab.sqrt() * g)


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2"])
def test_ddnm_without_noise_is_consistent_with_the_measurement(model, name: str) -> None:
    """σ_y = 0: x̂0|y = A⁺y + (I − A⁺A)x̂0 satisfies A x̂0|y = y exactly (DDNM eq. 13), at every step;
    and it keeps the null-space part of x̂0: (I − A⁺A)(x̂0|y − x̂0) = 0."""
    op = _ops(0.0)[name].double()
    x, _ = _xy(op)
    y = op(torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    states: list[dict] = []
    ddnm(model, x, timesteps=respaced_timesteps(1000, 4), generators=_gens(2), y=y, operator=op, callback=states.append)
    for s in states:
        torch.testing.assert_close(op(s["x0"]), y, atol=1e-10, rtol=0)
    x0_net = model.x0(x, 999).detach()
    a = dense_matrix(op, SHAPE)
    null = torch.eye(64, dtype=torch.float64) - torch.linalg.pinv(a) @ a
    diff = (states[0]["x0"] - x0_net).flatten(1)
    torch.testing.assert_close(diff @ null.T, torch.zeros_like(diff), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2", "blur_circular", "blur_reflect"])
def test_diffpir_data_step_solves_its_proximal_problem(model, name: str) -> None:
    """x̂0' = argmin ‖y − Ax‖² + ρ‖x − x̂0‖², ρ = λ(σ_y/2)²ᾱ/(1−ᾱ) (the paper's λ, the official code's noise level
    σ_y/2 in [0, 1] units): the normal equations (AᵀA + ρI)x̂0' = Aᵀy + ρx̂0 solved densely (a one-step grid
    returns x̂0')."""
    op = _ops(0.1)[name].double()
    x, y = _xy(op)
    lam = 5.0
    out = diffpir(model, x, timesteps=torch.tensor([T]), generators=_gens(2), y=y, operator=op, lam=lam)
    ab = model.alphas_cumprod[T]
    rho = lam * (op.sigma_y / 2) ** 2 * ab / (1 - ab)
    a = dense_matrix(op, SHAPE)
    x0 = model.x0(x, T).detach().flatten(1)
    rhs = (a.T @ y.flatten(1).T).T + rho * x0
    expected = torch.linalg.solve(a.T @ a + rho * torch.eye(64, dtype=torch.float64), rhs.T).T
    torch.testing.assert_close(out.flatten(1), expected, rtol=1e-4, atol=1e-6)


def test_daps_exact_draw_and_langevin_sample_the_gaussian_of_its_x0_step() -> None:
    """N(x0; x̂0, r²I)·N(y; A x0, τ²I) = N(m, C), C = (I/r² + AᵀA/τ²)⁻¹, m = C(x̂0/r² + Aᵀy/τ²): the
    perturb-and-MAP draw and 300 Langevin steps have that mean and covariance (Langevin up to its
    discretisation: the unadjusted chain inflates the variance along the stiffest direction by
    1/(1 − lr·L/2), 1.05 at step_size = lr·L = 0.1)."""
    n = 600
    op = Inpaint(SHAPE, [torch.Generator()], 0.2, mask="box", box_size=4).double()
    x0_hat = torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(1, *SHAPE).expand(n, *SHAPE)
    y = torch.full((n, *SHAPE), 0.3, dtype=torch.float64) * op.mask
    r2, tau = torch.tensor(0.25, dtype=torch.float64), 0.2
    a = dense_matrix(op, SHAPE)
    cov = torch.linalg.inv(torch.eye(64, dtype=torch.float64) / r2 + a.T @ a / tau**2)
    mean = cov @ (x0_hat[0].flatten() / r2 + a.T @ y[0].flatten() / tau**2)
    exact = gaussian_x0_draw(op, x0_hat, y, r2, tau, _gens(n)).flatten(1)
    langevin = langevin_x0(op, x0_hat, y, r2, tau, _gens(n, 10_000), 300, 0.1).flatten(1)
    for draws, tol in ((exact, 0.05), (langevin, 0.1)):
        se = (cov.diagonal() / n).sqrt()
        assert ((draws.mean(0) - mean).abs() / se).max() < 4.5
        ratio = draws.var(0) / cov.diagonal()
        assert (ratio.mean() - 1).abs() < tol, ratio.mean()


@pytest.mark.parametrize("name", ["identity", "inpaint", "sr2", "blur_reflect"])
def test_reddiff_gradient_is_the_gradient_of_the_papers_loss(model, name: str) -> None:
    """∇_μ Σ_i [‖y_i − Aμ_i‖²/(2m) + λ_t⟨sg(ε̂_i − ε_i), μ_i⟩/n] by autograd on the written-out loss (dense A)."""
    op = _ops(0.1)[name].double()
    mu, y = _xy(op)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ab = model.alphas_cumprod[T]
    lam_t = 0.3 * ((1 - ab) / ab).sqrt()
    eps_hat = model.eps(ab.sqrt() * mu + (1 - ab).sqrt() * eps, T)
    a = dense_matrix(op, SHAPE)
    leaf = mu.flatten(1).clone().requires_grad_(True)
    r = y.flatten(1) - leaf @ a.T
    loss = (r**2).sum() / (2 * a.shape[0]) + lam_t * ((eps_hat - eps).flatten(1).detach() * leaf).sum() / 64
    (expected,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(reddiff_gradient(op, mu, y, eps_hat, eps, lam_t).flatten(1), expected)


@pytest.mark.parametrize("name", ["inpaint", "sr2"])
def test_reddiff_is_adam_on_the_papers_loss_from_the_pseudoinverse(model, name: str) -> None:
    """Three steps of Algorithm 1 written out: μ = A⁺y (dense pinv), then per t (high to low) ε ~ N(0, I) from
    the image's generator, x_t = sqrt(ᾱ)μ + sqrt(1−ᾱ)ε, the loss's gradient by autograd (dense A), and a
    hand-written Adam step (β = 0.9, 0.99, bias-corrected)."""
    op = _ops(0.1)[name].double()
    _, y = _xy(op)
    grid, lam, lr = respaced_timesteps(1000, 3), 0.7, 0.05
    out = reddiff(model, torch.zeros(2, *SHAPE, dtype=torch.float64), timesteps=grid, generators=_gens(2), y=y,
                  operator=op, lam=lam, lr=lr)
    a = dense_matrix(op, SHAPE)
    mu = (y.flatten(1) @ torch.linalg.pinv(a).T).reshape(2, *SHAPE)
    m1, m2, gens = torch.zeros_like(mu), torch.zeros_like(mu), _gens(2)
    for k, t in enumerate(grid.tolist(), start=1):
        ab = model.alphas_cumprod[t]
        eps = per_image_noise(gens, mu)
        eps_hat = model.eps(ab.sqrt() * mu + (1 - ab).sqrt() * eps, t)
        leaf = mu.clone().requires_grad_(True)
        r = y.flatten(1) - leaf.flatten(1) @ a.T
        reg = lam * ((1 - ab) / ab).sqrt() * ((eps_hat - eps).detach() * leaf).sum() / 64
        (g,) = torch.autograd.grad((r**2).sum() / (2 * a.shape[0]) + reg, leaf)
        m1, m2 = 0.9 * m1 + 0.1 * g, 0.99 * m2 + 0.01 * g**2
        mu = mu - lr * (m1 / (1 - 0.9**k)) / ((m2 / (1 - 0.99**k)).sqrt() + 1e-8)
    torch.testing.assert_close(out, mu)


TRAVEL = pytest.param(functools.partial(ddnm, travel_length=2, travel_repeat=3), id="ddnm-travel")


@pytest.mark.parametrize("sampler", [*NEW, TRAVEL])
def test_same_seed_same_result_and_an_image_does_not_depend_on_its_batch(sampler) -> None:
    model = DiffusionModel(tiny_unet(8, 1, seed=2), DDPMScheduler())
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens(range(3))])
    op3 = Blur(SHAPE, gens(range(3)), 0.05, kernel="motion", kernel_size=3)
    y = op3.measure(torch.zeros_like(x), gens(range(3)))
    grid = respaced_timesteps(1000, 6)
    batch = sampler(model, x, timesteps=grid, generators=gens(range(3)), y=y, operator=op3)
    again = sampler(model, x, timesteps=grid, generators=gens(range(3)), y=y, operator=op3)
    torch.testing.assert_close(batch, again, atol=0, rtol=0)
    for i in range(3):
        op1 = Blur(SHAPE, gens([i]), 0.05, kernel="motion", kernel_size=3)
        alone = sampler(model, x[i : i + 1], timesteps=grid, generators=gens([i]), y=y[i : i + 1], operator=op1)
        # float32 rounding of batched convolutions, amplified by the ill-conditioned conjugate-gradient solves of
        # reflect blur at high noise (ScoreALD's γ_t² ≈ 1e4, DAPS's ρ = τ²/r² ≈ 1e-7); a coupled batch differs by O(1)
        torch.testing.assert_close(alone[0], batch[i], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("name", ["inpaint", "sr2", "blur_reflect"])
def test_noiseless_measurements_run_without_division_by_zero(sampler, name: str) -> None:
    oracle = gaussian_oracle(torch.zeros(SHAPE), 0.5)
    op = _ops(0.0, n=2)[name]
    y = op(torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2))
    out = sampler(oracle, x, timesteps=respaced_timesteps(1000, 10), generators=_gens(2), y=y, operator=op)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("sampler", "kwargs", "pattern"),
    [
        (scoreald, {"step_size": 0.0}, r"sampler\.step_size=0\.0 must be > 0"),
        (scoreald, {"corrector_steps": -1}, r"sampler\.corrector_steps=-1 must be >= 0"),
        (pigdm, {"eta": -0.5}, r"sampler\.eta=-0\.5 must be >= 0"),
        (ddnm, {"eta": 1.5}, r"sampler\.eta=1\.5 must lie in \[0, 1\]"),
        (diffpir, {"lam": -1.0}, r"sampler\.lam=-1\.0 must be > 0"),
        (diffpir, {"zeta": 2.0}, r"sampler\.zeta=2\.0 must lie in \[0, 1\]"),
        (daps, {"ode_steps": 0}, r"sampler\.ode_steps=0 must be >= 1"),
        (daps, {"langevin_steps": 3, "tau": 0.0}, r"sampler\.tau=0\.0 .* > 0 with sampler\.langevin_steps > 0"),
        (reddiff, {"lam": 0.0}, r"sampler\.lam=0\.0 must be > 0"),
        (reddiff, {"lr": -1.0}, r"sampler\.lr=-1\.0 must be > 0"),
        (ddnm, {"travel_length": 0}, r"sampler\.travel_length=0 must be >= 1"),
        (ddnm, {"travel_repeat": 0}, r"sampler\.travel_repeat=0 must be >= 1"),
        (ddnm, {"travel_repeat": 2}, r"sampler\.travel_length=1 must be < the number of grid steps \(1\)"),
    ],
)
def test_bad_hyperparameters_fail_before_compute(sampler, kwargs: dict, pattern: str) -> None:
    op = Identity(SHAPE, _gens(1), 0.1)
    with pytest.raises(ValueError, match=pattern):
        sampler(None, torch.zeros(1, *SHAPE), timesteps=torch.tensor([5]), generators=_gens(1),
                y=torch.zeros(1, *SHAPE), operator=op, **kwargs)


@pytest.mark.parametrize("sampler", NEW)
def test_every_new_sampler_needs_a_measurement(sampler) -> None:
    with pytest.raises(ValueError, match="needs a measurement"):
        sampler(None, torch.zeros(1, *SHAPE), timesteps=torch.tensor([5]), generators=_gens(1))


def test_declarations_tell_run_what_each_sampler_needs() -> None:
    assert all(s.spec.measurement and s.spec.noise == {"gaussian"} for s in NEW if s is not daps)
    assert daps.spec.noise == {"gaussian", "poisson", "poisson_gaussian"}  # Langevin steps: any noise model's gradient
    assert pigdm.spec.unet_grad
    assert not any(s.spec.unet_grad for s in (scoreald, ddnm, diffpir, daps, reddiff))
    assert diffpir.spec.operator == {"linear", "pinv", "prox"} and ddnm.spec.operator >= {"pinv", "solve_aat"}


@pytest.mark.parametrize("name", ["scoreald", "pigdm", "ddnm", "diffpir", "daps", "daps_exact", "reddiff"])
def test_config_runs_end_to_end(name: str, tmp_path: Path) -> None:
    result = run(make_cfg([*FAST, f"sampler={name}", "task=inpaint"], tmp_path))
    # the tiny model is untrained: its 3-step outputs may be flagged "diverged" (residual far above σ_y)
    assert result["status"] in ("ok", "diverged") and result["metrics"]["psnr"]["mean"] is not None


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["sampler=diffpir", "sampler.zeta=2"], r"sampler\.zeta=2 is invalid: allowed is a number in \[0, 1\]"),
        (["sampler=diffpir", "sampler.lam=0"], r"sampler\.lam=0 is invalid"),
        (["sampler=diffpir", "sampler.skip_type=cubic"], r"sampler\.skip_type='cubic' is invalid: allowed is one of uniform, quad"),
        (["sampler=daps", "sampler.ode_steps=0"], r"sampler\.ode_steps=0 is invalid: allowed is an integer >= 1"),
        (["sampler=daps", "sampler.tau=-1"], r"sampler\.tau=-1 is invalid"),
        (["sampler=daps", "sampler.langevin_steps=-2"], r"sampler\.langevin_steps=-2 is invalid"),
        (["sampler=daps", "sampler.lr_min_ratio=2"], r"sampler\.lr_min_ratio=2 is invalid: allowed is a number in \(0, 1\]"),
        (["sampler=daps_exact", "sampler.step_size=0"], r"sampler\.step_size=0 is invalid"),
        (["sampler=scoreald", "sampler.corrector_steps=-1"], r"sampler\.corrector_steps=-1 is invalid"),
        (["sampler=scoreald", "sampler.corrector_size=0"], r"sampler\.corrector_size=0 is invalid"),
        (["sampler=reddiff", "sampler.lr=0"], r"sampler\.lr=0 is invalid: allowed is a finite number > 0"),
        (["sampler=ddnm", "sampler.travel_repeat=0"], r"sampler\.travel_repeat=0 is invalid: allowed is an integer >= 1"),
        (
            ["sampler=ddnm", "sampler.travel_length=3", "sampler.travel_repeat=2"],
            r"sampler\.travel_length=3 is invalid with sampler\.travel_repeat=2: allowed is 1\.\.2",
        ),
    ],
)
def test_config_validation_names_the_bad_hyperparameter(overrides: list[str], pattern: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=pattern):
        validate(make_cfg([*FAST, *overrides], tmp_path))


# ---------------------------------------------------------------- DDNM time travel (Algorithm 3)


def test_time_travel_schedule_is_the_authors_jump_schedule_by_hand() -> None:
    """get_schedule_jump(6, 2, 2) visits the authors' levels 5 4 3 2 [3 4] 3 2 1 0 [1 2] 1 0 −1: jump points at
    levels 0 and 2 (indices 5 and 3 of our grid), each stretch of 2 steps sampled twice."""
    assert travel_schedule(6, 2, 2) == [0, 1, 2, 3, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert travel_schedule(3, 1, 3) == [0, 1, 0, 1, 0, 1, 2, 1, 2, 1, 2, 3]
    assert travel_schedule(4, 3, 5) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert travel_schedule(5, 2, 1) == list(range(6))


def test_time_travel_visits_the_schedule_and_jumps_back_by_the_forward_diffusion(
    model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback sees the grid steps of the jump schedule with a monotone ``i``; after a jump from level t
    to t' the UNet gets sqrt(ᾱ_t'/ᾱ_t)·x_t + sqrt(1 − ᾱ_t'/ᾱ_t)·z, x_t the state before the jump."""
    op = Blur(SHAPE, _gens(1), 0.1, kernel="motion", kernel_size=3).double()  # reflect-padded motion: no SVD, so the smooth budget (its noise drawn in ddim)
    x, y = _xy(op)
    grid = respaced_timesteps(1000, 6)
    drawn: list[torch.Tensor] = []  # the noise of each jump back (ddnm's own draws; its DDIM steps draw in ddim)
    inputs: list[torch.Tensor] = []  # the UNet's inputs
    monkeypatch.setattr(diffexp.samplers.ddnm, "per_image_noise", lambda g, like: drawn.append(per_image_noise(g, like))
                        or drawn[-1])
    real_eps = model.eps
    monkeypatch.setattr(model, "eps", lambda z, t: inputs.append(z) or real_eps(z, t))
    states: list[dict] = []
    ddnm(model, x, timesteps=grid, generators=_gens(2), y=y, operator=op, callback=states.append,
         travel_length=2, travel_repeat=2)
    steps = [0, 1, 2, 1, 2, 3, 4, 3, 4, 5]  # the denoising moves of [0, 1, 2, 3, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert [s["i"] for s in states] == list(range(10))
    assert [int(s["t"]) for s in states] == grid[steps].tolist()
    assert len(drawn) == 2 and len(inputs) == 10
    ab = model.alphas_cumprod
    for k, (before, to, frm) in enumerate([(2, 1, 3), (6, 3, 5)]):  # callback index before the jump, levels
        ratio = ab[grid[to]] / ab[grid[frm]]
        expected = ratio.sqrt() * states[before]["x"] + (1 - ratio).sqrt() * drawn[k]
        torch.testing.assert_close(inputs[before + 1], expected, rtol=0, atol=1e-12)


def test_time_travel_off_reproduces_ddnm_without_it(model) -> None:
    """travel_repeat = 1 (any travel_length) is the plain DDNM+ chain, bit for bit (its values on inpainting are
    checked against the paper's SVD form in ``tests/test_ddnm_svd.py``)."""
    op = Inpaint(SHAPE, _gens(2), 0.1, mask="box", box_size=4).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    y = op(torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)) * 0.5
    run_ = functools.partial(ddnm, model, x, timesteps=respaced_timesteps(1000, 6), y=y, operator=op)
    out = run_(generators=_gens(2))
    for length in (1, 3, 5):
        torch.testing.assert_close(run_(generators=_gens(2), travel_length=length, travel_repeat=1), out, rtol=0,
                                   atol=0)
    assert not torch.equal(run_(generators=_gens(2), travel_length=2, travel_repeat=2), out)


@pytest.mark.parametrize(("num_steps", "length", "repeat", "calls"), [(6, 2, 2, 10), (7, 2, 3, 7 + 2 * 2 * 3),
                                                                       (5, 1, 1, 5), (10, 3, 2, 10 + 3 * 3)])
def test_ddnm_network_calls_count_every_unet_call(num_steps: int, length: int, repeat: int, calls: int) -> None:
    model = DiffusionModel(tiny_unet(8, 1, seed=2), DDPMScheduler())
    made: list[int] = []
    model.unet.register_forward_hook(lambda m, i, out: made.append(1))
    grid = respaced_timesteps(1000, num_steps)
    op = Identity(SHAPE, _gens(1), 0.1)
    ddnm(model, torch.zeros(1, *SHAPE), timesteps=grid, generators=_gens(1), y=torch.zeros(1, *SHAPE), operator=op,
         travel_length=length, travel_repeat=repeat)
    assert ddnm.spec.network_calls(grid, travel_length=length, travel_repeat=repeat, eta=1.0) == len(made) == calls


def test_time_travel_run_logs_monotone_steps_and_counts_its_network_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a run, W&B's ``sampling/step`` stays monotone over batches with time travel (5 steps per image:
    3 grid steps, each of the 2 lower stretches sampled twice) and metrics.json's ``nfe`` is 5."""
    from diffexp.tracking.none import NoLogger

    steps: list[int] = []
    monkeypatch.setattr(NoLogger, "log_every", 1)
    monkeypatch.setattr(NoLogger, "log_step", lambda self, state, **kw: steps.append(state["step"]))
    overrides = [*FAST, "sampler=ddnm", "task=inpaint", "batch_size=1", "sampler.travel_repeat=2"]
    result = run(make_cfg(overrides, tmp_path))
    assert steps == list(range(10)) and result["nfe"] == 5
