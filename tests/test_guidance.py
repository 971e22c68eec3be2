"""DPS and ScoreALD steps against their equations (finite differences) and batch invariance."""

import pytest
import torch
from diffusers import DDPMScheduler

from diffexp.model import DiffusionModel, tiny_unet
from diffexp.operators.blur import Blur
from diffexp.samplers.dps import dps
from diffexp.samplers.scoreald import scoreald
from diffexp.schedule import respaced_timesteps

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


def test_scoreald_step_matches_its_documented_equation(setup) -> None:
    model, op, x, y = setup
    eta = 0.5
    out = scoreald(model, x, timesteps=torch.tensor([T]), generators=[torch.Generator()] * 2, y=y, operator=op,
                   step_size=eta)
    ab = model.alphas_cumprod[T]
    gamma2 = (1 - ab) / ab
    with torch.no_grad():
        step = model.x0(x, T) - out
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = lambda z: ((op(z / ab.sqrt()) - y) ** 2).sum()  # noqa: E731
    fd = _directional(h, x, v)
    expected = eta * (1 - ab) / (2 * (op.sigma_y**2 + gamma2)) * fd
    assert (step * v).sum().item() == pytest.approx(expected.item(), rel=1e-6)


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
