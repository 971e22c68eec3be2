"""The DPS step against its equation (finite differences), and batch invariance of DPS and ScoreALD
(ScoreALD's and the other guided samplers' equations: tests/test_samplers.py)."""

import pytest
import torch
from diffusers import DDPMScheduler

from diffexp.models.diffusion import DiffusionModel, tiny_unet
from diffexp.operators.blur import Blur
from diffexp.samplers.dps import dps, safe_norm
from diffexp.samplers.scoreald import scoreald
from diffexp.models.schedule import respaced_timesteps

T = 600  # a single-step grid at t: ancestral step = x̂0 (no noise), so out = x̂0 − step


@pytest.fixture(scope="module")
def setup():
    model = DiffusionModel(tiny_unet(8, 1, seed=1), DDPMScheduler(clip_sample=False)).double()
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    op = Blur((1, 8, 8), gens, sigma_y=0.1, kernel_size=3, std=1.0).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * 0.5
    return model, op, x, y


def _directional(f, x, v, h=1e-5):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def test_dps_step_is_zeta_times_gradient_of_unsquared_per_image_norm(setup) -> None:
    model, op, x, y = setup
    zeta = 0.3
    grid = torch.tensor([T])
    out = dps(model, x, timesteps=grid, generators=[torch.Generator()] * 2, y=y, operator=op, step_size=zeta)
    with torch.no_grad():
        grad = (model.x0(x, T) - out) / zeta
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for i in range(2):
        vi = torch.zeros_like(v)
        vi[i] = v[i]
        norm_i = lambda z: (y[i] - op(model.x0(z, T))[i]).norm()  # noqa: E731
        with torch.no_grad():
            fd = _directional(norm_i, x, vi)
        assert (grad * vi).sum().item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)


def test_dps_step_is_finite_and_zero_when_the_residual_is_exactly_zero(setup) -> None:
    """σ_y = 0 and a perfect fit: ‖y − A(x̂0)‖ = 0, where the norm's gradient r/‖r‖ would be 0/0 = NaN."""
    model, op, x, _ = setup
    grid = torch.tensor([T])
    with torch.no_grad():
        y = op(model.x0(x, T))  # DPS recomputes exactly this x̂0 (no clipping: clip_sample=False)
    out = dps(model, x, timesteps=grid, generators=[torch.Generator()] * 2, y=y, operator=op, step_size=0.3)
    with torch.no_grad():
        assert torch.equal(out, model.x0(x, T))  # a zero (sub)gradient: the step is x̂0 itself


def test_safe_norm_equals_the_norm_and_its_gradient_away_from_zero() -> None:
    r = torch.randn(3, 5, dtype=torch.float64)
    r[1] = 0
    leaf = r.clone().requires_grad_(True)
    norm = safe_norm(leaf)
    (grad,) = torch.autograd.grad(norm.sum(), leaf)
    assert torch.equal(norm, r.norm(dim=1))
    assert torch.equal(grad[1], torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(grad[[0, 2]], r[[0, 2]] / r[[0, 2]].norm(dim=1, keepdim=True))


def test_dps_declares_that_it_backpropagates_through_the_unet() -> None:
    assert dps.spec.measurement and dps.spec.unet_grad and dps.spec.operator == frozenset()


@pytest.mark.parametrize("sampler", [dps, scoreald])
def test_an_image_does_not_depend_on_its_batch(sampler) -> None:
    model = DiffusionModel(tiny_unet(8, 1, seed=2), DDPMScheduler())
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    x = torch.stack([torch.randn(1, 8, 8, generator=g) for g in gens(range(4))])
    op4 = Blur((1, 8, 8), gens(range(4)), 0.05, kernel="motion", kernel_size=3)
    y = op4.measure(torch.zeros_like(x), gens(range(4)))
    grid = respaced_timesteps(1000, 10)
    batch = sampler(model, x, timesteps=grid, generators=gens(range(4)), y=y, operator=op4, step_size=0.5)
    for i in range(4):
        op1 = Blur((1, 8, 8), gens([i]), 0.05, kernel="motion", kernel_size=3)
        alone = sampler(model, x[i : i + 1], timesteps=grid, generators=gens([i]), y=y[i : i + 1], operator=op1,
                        step_size=0.5)
        # CPU convolutions sum in a batch-dependent order: equal up to float32 rounding, not bit for bit
        torch.testing.assert_close(alone[0], batch[i], atol=1e-4, rtol=1e-4)
