"""ALD, pure annealed Langevin dynamics (Jalal et al. 2021, Alg. 1, ``diffexp/samplers/ald.py``): its update against
Alg. 1 written out with a closed-form prior score and a dense A, its samples against the exact Gaussian posterior,
a run through the real config, and its hyperparameter errors.

The prior is N(μ, s²I) on 1×8×8 images (``diffexp.models.gaussian``); in VE coordinates x = x0 + σ·ε its smoothed
density is N(μ, (s² + σ²)I), whose score −(x − μ)/(s² + σ²) shares no formula with the sampler's −ε_θ/σ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST, make_cfg
from torch import Tensor

from benchmarks.posterior_bias import OPERATORS, posterior_error
from diffexp.experiment import run
from diffexp.models.gaussian import dense_matrix, gaussian_oracle
from diffexp.operators.blur import Blur
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.super_resolution import SuperResolution
from diffexp.rng import per_image_noise
from diffexp.samplers.ald import ald, network_calls
from diffexp.samplers.registry import available
from diffexp.validate import ConfigError, validate

SHAPE = (1, 8, 8)
S2 = 0.5
MU = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64).reshape(SHAPE)
ORACLE = gaussian_oracle(MU, S2)
AC = ORACLE.alphas_cumprod.double()


def _op(name: str, sigma_y: float) -> torch.nn.Module:
    g = [torch.Generator().manual_seed(0)]
    return {
        "inpaint": lambda: Inpaint(SHAPE, g, sigma_y, mask="box", box_size=4),
        "sr2": lambda: SuperResolution(SHAPE, g, sigma_y, factor=2),
        "blur_circular": lambda: Blur(SHAPE, g, sigma_y, kernel_size=3, std=1.0, padding="circular"),
        "identity": lambda: Identity(SHAPE, g, sigma_y),
    }[name]().double()


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(10 + i) for i in range(n)]


def alg1(
    x_vp: Tensor, y: Tensor, a: Tensor, sigma_y: float, ts: list[int], eps: float, k: int, propagated: bool = False
) -> list[Tensor]:
    """Alg. 1 written out: levels σ_i = sqrt((1−ᾱ)/ᾱ) at ``ts``, x = x_VP/sqrt(ᾱ_{t_0}), and ``k`` steps per level
    x ← x + α_i(−(x − μ)/(s² + σ_i²) + Aᵀ(y − A x)/(σ_y² + σ_i²)) + sqrt(2α_i)z, α_i = ε·σ_i²/σ_L², with the noise z
    drawn from copies of the per-image generators; ``propagated``: the data term Aᵀ(σ_y²I + σ_i²AAᵀ)⁻¹(y − A x) by a
    dense solve. Returns x after every level."""
    sig2 = [float((1 - AC[t]) / AC[t]) for t in ts]
    gens = _gens(x_vp.shape[0])
    x = x_vp / AC[ts[0]].sqrt()
    rows = y.reshape(y.shape[0], -1)
    out = []
    for s2 in sig2:
        alpha = eps * s2 / sig2[-1]
        for _ in range(k):
            prior = -(x - MU) / (S2 + s2)
            r = rows - x.reshape(x.shape[0], -1) @ a.T
            if propagated:
                cov = sigma_y**2 * torch.eye(a.shape[0], dtype=torch.float64) + s2 * a @ a.T
                data = (torch.linalg.solve(cov, r.T).T @ a).reshape(x.shape)
            else:
                data = (r @ a).reshape(x.shape) / (sigma_y**2 + s2)
            x = x + alpha * (prior + data) + (2 * alpha) ** 0.5 * per_image_noise(gens, x)
        out.append(x)
    return out


@pytest.mark.parametrize("likelihood", ["paper", "propagated"])
@pytest.mark.parametrize("name", ["inpaint", "sr2", "blur_circular"])
def test_each_level_is_the_written_out_alg1_step(name: str, likelihood: str) -> None:
    """Three levels, two steps each, on an operator whose AᵀA is not the identity: every level's x equals Alg. 1
    written out (α_i = ε·σ_i²/σ_L², the σ_y² + σ_i² denominator, sqrt(2α_i) noise), to float64 rounding; with
    ``likelihood=propagated`` the dense (σ_y²I + σ_i²AAᵀ)⁻¹ (for sr2, AAᵀ = I/4: not the paper's term)."""
    op = _op(name, 0.1)
    n, ts, eps = 3, [500, 300, 100], 0.05  # σ_L² = 0.11 at t = 100: ε < σ_L²
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = op(MU + torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).expand(
        n, -1, -1, -1).contiguous()
    states: list[dict] = []
    out = ald(ORACLE, x, timesteps=torch.tensor(ts), generators=_gens(n), y=y, operator=op, callback=states.append,
              step_size=eps, steps_per_level=2, likelihood=likelihood)
    expected = alg1(x, y, dense_matrix(op, SHAPE), op.sigma_y, ts, eps, 2, propagated=likelihood == "propagated")
    assert [int(s["t"]) for s in states] == ts
    for state, want in zip(states, expected):
        torch.testing.assert_close(state["x"], want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, expected[-1], rtol=1e-10, atol=1e-10)


def test_callback_x0_is_tweedie_and_network_calls_count_every_langevin_step() -> None:
    """x0 of the callback is Tweedie's x_in + σ²·score = (x_in·s² + μ·σ²)/(s² + σ²) at the level's last input
    (one level, one step: x_in is the start x/sqrt(ᾱ)); the declared NFE is levels × steps_per_level."""
    op = _op("sr2", 0.1)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = op(x)
    states: list[dict] = []
    ald(ORACLE, x, timesteps=torch.tensor([200]), generators=_gens(2), y=y, operator=op, callback=states.append,
        step_size=0.01, steps_per_level=1)
    s2 = (1 - AC[200]) / AC[200]
    x_in = x / AC[200].sqrt()
    torch.testing.assert_close(states[0]["x0"], (x_in * S2 + MU * s2) / (S2 + s2), rtol=1e-10, atol=1e-10)
    assert network_calls(torch.arange(7), steps_per_level=3) == 21
    spec = available()["ald"]
    assert spec.measurement and not spec.unet_grad and spec.noise == frozenset({"gaussian"})
    assert spec.operator == frozenset({"differentiable"})


@pytest.mark.parametrize("op", ["identity", "inpaint", "sr2"])
def test_fine_low_noise_levels_sample_the_exact_posterior(op: str) -> None:
    """At its defaults (ε = 5e-5 = σ_L²/2, 3 steps per level) on the 101 unit levels t = 100 … 0, started from the
    exact p(x_t | y), the samples have the exact posterior mean and variance (tolerances of tests/test_posterior.py;
    measured var_ratio 1.04, 1.03, 1.03). ε·σ_i instead of ε·σ_i² in α_i gives var_ratio 1.3–1.6."""
    r = posterior_error(ald, OPERATORS[op](0.4), s2=1.0, num_samples=400, num_steps=101, t_start=100)
    assert r["mean_z"] < 1.1, r
    assert r["max_z"] < 4.5, r
    assert abs(r["var_ratio"] - 1) < 0.05, r


def test_coarse_grid_from_noise_overestimates_the_variance() -> None:
    """From pure noise on 100 levels (only ~10 of them below t = 100) the chain stops mixing where α_i·(1/σ_i² +
    1/(σ_y² + σ_i²)) = ε·(σ_i/σ_L)²·(...) becomes small, before the target reaches the posterior: measured
    var_ratio 1.18 (1.33 with 50 levels), the mean still close. Alg. 1 needs many low-noise levels (NCSNv2's
    geometric grids put most of theirs there)."""
    r = posterior_error(ald, OPERATORS["identity"](0.4), s2=1.0, num_samples=400, num_steps=100)
    assert 1.1 < r["var_ratio"] < 1.3, r
    assert r["mean_z"] < 2.0, r


def test_config_runs_end_to_end(tmp_path: Path) -> None:
    result = run(make_cfg([*FAST, "sampler=ald", "task=inpaint"], tmp_path))
    # the tiny model is untrained: its 3-level outputs may be flagged "diverged" (residual far above σ_y)
    assert result["status"] in ("ok", "diverged") and result["metrics"]["psnr"]["mean"] is not None
    assert result["nfe"] == 3 * 3


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["sampler.step_size=0"], r"sampler\.step_size=0 is invalid: allowed is a finite number > 0"),
        (["sampler.step_size=-1e-5"], r"sampler\.step_size=-1e-05 is invalid"),
        (["sampler.steps_per_level=0"], r"sampler\.steps_per_level=0 is invalid: allowed is an integer >= 1"),
        (["sampler.steps_per_level=1.5"], r"sampler\.steps_per_level=1\.5 is invalid"),
        (["sampler.likelihood=exact"], r"sampler\.likelihood='exact' is invalid: allowed is one of paper, propagated"),
    ],
)
def test_config_validation_names_the_bad_hyperparameter(overrides: list[str], pattern: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=pattern):
        validate(make_cfg([*FAST, "sampler=ald", "task=inpaint", *overrides], tmp_path))


def test_a_step_size_that_diverges_at_the_last_level_is_refused() -> None:
    """ε ≥ 2σ_L² makes the prior term alone unstable at the last level: refused, naming σ_L² and the stable range."""
    op = _op("identity", 0.1)
    x = torch.randn(1, *SHAPE, dtype=torch.float64)
    s2_last = float((1 - AC[0]) / AC[0])  # σ_L² ≈ 1e-4 at t = 0
    with pytest.raises(ValueError, match=r"sampler\.step_size=0\.0003 must be < 2·σ_L² = 0\.0002.*ε < σ_L² = 0\.0001"):
        ald(ORACLE, x, timesteps=torch.tensor([10, 0]), generators=_gens(1), y=op(x), operator=op, step_size=3e-4)
    assert 2 * s2_last < 3e-4
    with pytest.raises(ValueError, match="needs a measurement"):
        ald(ORACLE, x, timesteps=torch.tensor([10, 0]), generators=_gens(1), step_size=1e-5)


def test_propagated_is_the_paper_where_aat_is_the_identity_and_needs_solve_aat() -> None:
    """With AAᵀ = I (a mask, the identity) (σ_y²I + σ_i²AAᵀ)⁻¹ = 1/(σ_y² + σ_i²): both likelihoods give the same chain.
    An operator without ``solve_aat`` is refused for ``propagated``, naming the fix."""
    op = _op("inpaint", 0.1)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = op(x)
    kw = dict(timesteps=torch.tensor([400, 50, 0]), y=y, operator=op, step_size=5e-5)
    paper = ald(ORACLE, x, generators=_gens(2), likelihood="paper", **kw)
    torch.testing.assert_close(ald(ORACLE, x, generators=_gens(2), likelihood="propagated", **kw), paper,
                               rtol=1e-10, atol=1e-10)

    class NoSolve(torch.nn.Module):
        capabilities = frozenset({"differentiable"})
        sigma_y = 0.1

        def forward(self, v: Tensor) -> Tensor:
            return v

    with pytest.raises(ValueError, match=r"sampler\.likelihood=propagated needs an operator with solve_aat.*NoSolve"):
        ald(ORACLE, x, timesteps=torch.tensor([10, 0]), generators=_gens(2), y=y, operator=NoSolve(),
            step_size=5e-5, likelihood="propagated")
