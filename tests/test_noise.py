"""Noise models (``noise=gaussian|poisson|poisson_gaussian``): sampling statistics, per-image generators, NLL and
residual against autograd and scipy, Gaussian bit-identity with the pre-noise-model measurement, the pairing
refusal, the generated compatibility matrix and an end-to-end Poisson run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, cli, make_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import poisson as scipy_poisson

from diffexp.errors import ConfigError
from diffexp.noise import available
from diffexp.noise.base import NoiseModel
from diffexp.noise.gaussian import Gaussian
from diffexp.noise.poisson import MIN_COUNT, Poisson
from diffexp.noise.poisson_gaussian import PoissonGaussian
from diffexp.operators.blur import Blur
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.rng import per_image_noise
from diffexp.validate import validate

SHAPE = (1, 8, 8)
MODELS = {"gaussian": Gaussian(0.1), "poisson": Poisson(0.5), "poisson_gaussian": PoissonGaussian(0.5, 0.1)}


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def mean_image(n: int = 3, seed: int = 1) -> torch.Tensor:
    """Clean measurements in [-1, 1], float64, with black pixels (as digits have)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    x[:, :, :2] = -1.0
    return x


def test_every_option_is_a_noise_model_named_like_its_file() -> None:
    found = available()
    assert sorted(found) == ["gaussian", "poisson", "poisson_gaussian"]
    for name, cls in found.items():
        assert issubclass(cls, NoiseModel) and cls.name == name and cls.__module__ == f"diffexp.noise.{name}"


def test_gaussian_measure_is_bit_identical_to_the_pre_noise_model_one(tmp_path: Path) -> None:
    """y = A(x) + σ_y·per_image_noise, as Operator.measure was: with noise=None and with the config's noise model."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cfg = make_cfg(["task=deblur"], tmp_path)
    built = instantiate(cfg.task.operator)(image_shape=(3, 16, 16), generators=gens(2))
    assert isinstance(built.noise, Gaussian) and built.noise.sigma == built.sigma_y == 0.05
    for op in (Blur((3, 16, 16), gens(2), 0.05, kernel_size=3), Inpaint((3, 16, 16), gens(2), 0.05), built):
        clean = op(x)
        assert torch.equal(op.measure(x, gens(2, 7)), clean + 0.05 * per_image_noise(gens(2, 7), clean))
    assert torch.equal(Identity((3, 16, 16), gens(2), 0.0).measure(x, gens(2)), x)  # σ = 0 draws nothing


@pytest.mark.parametrize("rate", [0.1, 1.0])
@pytest.mark.parametrize("value", [0.2, 0.9])
def test_poisson_counts_have_mean_equal_to_variance_at_the_rate(rate: float, value: float) -> None:
    """k = 255·rate·y₀₁ is an integer with E k = Var k = 255·rate·x₀₁ (x₀₁ the [0, 1] value), as DPS defines it."""
    mean = torch.full((1, 1, 200, 200), 2 * value - 1, dtype=torch.float64)
    y = Poisson(rate).sample(mean, gens(1))
    k = (y + 1) / 2 * 255 * rate
    assert torch.allclose(k, k.round(), atol=1e-6)
    lam, n = 255 * rate * value, k.numel()
    assert abs(float(k.mean()) - lam) < 4 * math.sqrt(lam / n)
    assert abs(float(k.var()) / lam - 1) < 4 * math.sqrt(2 / n) + 0.01


def test_poisson_gaussian_variance_is_the_sum_of_both() -> None:
    noise = PoissonGaussian(rate=0.5, sigma=0.1)
    mean = torch.full((1, 1, 200, 200), 0.2, dtype=torch.float64)  # x₀₁ = 0.6
    y = noise.sample(mean, gens(1))
    c = 255 * 0.5
    expected = 4 * 0.6 / c + 0.1**2
    assert abs(float(y.mean()) - 0.2) < 4 * math.sqrt(expected / y.numel())
    assert abs(float(y.var()) / expected - 1) < 0.05
    assert noise.sigma_y == pytest.approx(math.sqrt(4 / c + 0.01))


def test_black_is_measured_black_and_below_black_clamps() -> None:
    mean = torch.tensor([[[[-1.0, -1.5]]]], dtype=torch.float64)
    assert torch.equal(Poisson(1.0).sample(mean, gens(1)), torch.full_like(mean, -1.0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_image_draws_from_its_own_generator(name: str) -> None:
    noise, mean = MODELS[name], mean_image(3)
    batch = noise.sample(mean, gens(3))
    assert torch.equal(batch, noise.sample(mean, gens(3)))  # deterministic given the generators
    for i in range(3):  # image i alone, with its generator, is row i of the batch
        assert torch.equal(noise.sample(mean[i:i + 1], [torch.Generator().manual_seed(i)]), batch[i:i + 1])
    assert not torch.equal(batch, noise.sample(mean, gens(3, 10)))
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3 images"):
        noise.sample(mean, gens(2))


def poisson_nll_gradient(noise: Poisson, y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """∂nll/∂mean written out: (c/2)·f'(λ), f' = 1 − k/λ (k > 0, λ ≥ MIN_COUNT), 1 − k/MIN_COUNT below it,
    1 where k = 0 and λ > 0, 0 where k = 0 and λ ≤ 0."""
    c = noise.scale
    k, lam = c * (y + 1) / 2, c * (mean + 1) / 2
    slope = torch.where(lam >= MIN_COUNT, 1 - k / lam, 1 - k / MIN_COUNT)
    slope = torch.where(k > 0, slope, (lam > 0).to(lam.dtype))
    return c / 2 * slope


def test_poisson_nll_is_scipys_and_its_gradient_the_written_one() -> None:
    noise, mean = Poisson(0.5), mean_image(2)
    y = noise.sample(mean, gens(2))
    mean = (mean + 0.3 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    mean.requires_grad_(True)
    nll = noise.nll(y, mean)
    (grad,) = torch.autograd.grad(nll.sum(), mean)
    assert torch.allclose(grad, poisson_nll_gradient(noise, y, mean.detach()), rtol=1e-10, atol=1e-10)
    k, lam = (noise.counts(y).round().numpy(), noise.counts(mean.detach()).numpy())
    exact = lam >= MIN_COUNT  # where no tangent continuation applies, the NLL is scipy's −log pmf
    pixel = noise._f(noise.counts(y), noise.counts(mean.detach())) + torch.lgamma(noise.counts(y) + 1)
    assert exact.sum() > 50 and (~exact).sum() > 10
    assert torch.allclose(pixel[exact], torch.from_numpy(-scipy_poisson.logpmf(k, lam)[exact]), rtol=1e-9, atol=1e-9)


def test_gaussian_nll_gradient_and_residual() -> None:
    noise, mean = Gaussian(0.1), mean_image(2).requires_grad_(True)
    y = noise.sample(mean.detach(), gens(2))
    (grad,) = torch.autograd.grad(noise.nll(y, mean).sum(), mean)
    assert torch.allclose(grad, (mean.detach() - y) / 0.01, rtol=1e-12)
    assert torch.equal(noise.residual(y, mean.detach()), y - mean.detach())  # DPS's residual, bit for bit
    expected = -torch.distributions.Normal(mean.detach(), 0.1).log_prob(y).flatten(1).sum(1)
    assert torch.allclose(noise.nll(y, mean.detach()), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_residual_norm_is_the_nll_up_to_a_constant(name: str) -> None:
    """nll = ‖r‖²/(2·sigma_y²) + const: equal values differences and equal autograd gradients at random means."""
    noise = MODELS[name]
    y = noise.sample(mean_image(2), gens(2))
    s2 = noise.sigma_y**2
    offsets = []
    for seed in (11, 12):
        mean = (mean_image(2, seed) * 1.2).requires_grad_(True)  # some below black, some above white
        r = noise.residual(y, mean)
        half = r.flatten(1).pow(2).sum(1) / (2 * s2)
        nll = noise.nll(y, mean)
        g_half, g_nll = (torch.autograd.grad(v.sum(), mean)[0] for v in (half, nll))
        assert torch.isfinite(g_half).all() and torch.allclose(g_half, g_nll, rtol=1e-9, atol=1e-9)
        written = noise.gradient(y, mean.detach())  # ½∂‖r‖²/∂mean, as DAPS's Langevin step uses it
        assert torch.allclose(written, NoiseModel.gradient(noise, y, mean.detach()), rtol=1e-9, atol=1e-9)
        assert torch.allclose(written, s2 * g_nll, rtol=1e-9, atol=1e-9)
        moved = r.detach() != 0  # r points as y − mean does (the norm alone would not see a flipped sign)
        assert moved.sum() > 50 and torch.equal(r.detach()[moved].sign(), (y - mean.detach())[moved].sign())
        offsets.append(nll.detach() - half.detach())
    assert torch.allclose(offsets[0], offsets[1], rtol=1e-10)


def test_poisson_residual_gradient_is_finite_at_a_perfect_fit() -> None:
    noise = Poisson(1.0)
    y = noise.sample(mean_image(1), gens(1))
    mean = y.clone().requires_grad_(True)
    r = noise.residual(y, mean)
    (grad,) = torch.autograd.grad(r.flatten(1).norm(dim=1).sum() + r.sum(), mean)
    assert torch.isfinite(grad).all() and float(r.detach().abs().max()) < 1e-6


def test_bad_settings_are_refused_with_the_config_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("noise.rate=0.0 is invalid: allowed is a finite number > 0")):
        Poisson(0.0)
    with pytest.raises(ValueError, match=re.escape("noise.sigma=0.0 is invalid: allowed is a finite number > 0")):
        PoissonGaussian(1.0, 0.0)
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(["noise=poisson", "noise.rate=-1.0"], tmp_path))
    assert info.value.problems == ["noise.rate=-1.0 is invalid: allowed is a finite number > 0"]
    with pytest.raises(ConfigError) as info:  # noise.sigma follows task.sigma_y: reported once, under the user's key
        validate(make_cfg(["task.sigma_y=-0.1"], tmp_path))
    assert info.value.problems == ["task.sigma_y=-0.1 is invalid: allowed is a finite number >= 0"]


@pytest.mark.parametrize("noise", sorted(MODELS))
def test_building_the_operator_leaves_the_runs_config_as_composed(noise: str, tmp_path: Path) -> None:
    """noise.sigma is null, not ${task.sigma_y}: instantiate would resolve an interpolation inside the interpolated
    noise node in place, and run_config.yaml (and W&B's copy) would record the value instead of the link."""
    cfg = make_cfg([f"noise={noise}", "task.sigma_y=0.2"], tmp_path)
    before = OmegaConf.to_container(cfg, resolve=False)
    op = instantiate(cfg.task.operator)(image_shape=SHAPE, generators=gens(1))
    assert OmegaConf.to_container(cfg, resolve=False) == before
    assert getattr(op.noise, "sigma", 0.2) == 0.2  # the Gaussian part follows task.sigma_y


def test_the_operator_reports_the_noise_models_sigma(tmp_path: Path) -> None:
    op = instantiate(make_cfg(["noise=poisson", "noise.rate=0.5"], tmp_path).task.operator)(
        image_shape=SHAPE, generators=gens(1))
    assert isinstance(op.noise, Poisson) and op.sigma_y == pytest.approx(2 / math.sqrt(127.5))
    with pytest.raises(ValueError, match=r"task.operator.sigma_y=0.05 disagrees with noise.sigma=0.1"):
        Blur(SHAPE, gens(1), 0.05, kernel_size=3, noise=Gaussian(0.1))


@pytest.mark.parametrize("noise", ["poisson", "poisson_gaussian"])
@pytest.mark.parametrize("sampler", ["ddnm", "diffpir", "pigdm", "reddiff", "scoreald"])
def test_gaussian_only_samplers_are_refused_for_other_noise(noise: str, sampler: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg([f"noise={noise}", f"sampler={sampler}"], tmp_path))
    assert info.value.problems == [
        f"sampler={sampler} cannot solve task=deblur: it needs gaussian noise (noise={noise}); samplers that can: "
        "daps, daps_exact, dps"
    ]


def test_dps_and_daps_pass_every_noise_model(tmp_path: Path) -> None:
    for noise in available():
        for sampler in ("dps", "daps"):
            validate(make_cfg([f"noise={noise}", f"sampler={sampler}"], tmp_path))


def test_daps_exact_draw_needs_gaussian_noise_and_its_langevin_step_follows_the_noise_model() -> None:
    from diffexp.samplers.daps_exact import daps_exact as daps, langevin_x0

    op = Blur(SHAPE, gens(2), 0.05, kernel_size=3, noise=Poisson(1.0))
    y = op.measure(mean_image(2).float(), gens(2))
    with pytest.raises(ValueError, match=r"sampler\.langevin_steps=0 draws x0 exactly .*noise=poisson needs Langevin"):
        daps(None, torch.zeros(2, *SHAPE), timesteps=torch.tensor([10]), generators=gens(2), y=y, operator=op)
    x0_hat, r2, tau = mean_image(2, 4).float(), torch.tensor(0.5), op.sigma_y
    one = langevin_x0(op, x0_hat, y, r2, tau, gens(2, 9), 1, 0.01)
    lr = 0.01 / (1 / r2 + 1 / tau**2)
    noise = (2 * lr).sqrt() * per_image_noise(gens(2, 9), x0_hat)
    expected = x0_hat - lr * op.adjoint(op.noise.gradient(y, op(x0_hat))) / tau**2 + noise
    assert torch.allclose(one, expected, atol=1e-6)


def test_the_compatibility_matrix_in_the_docs_is_the_generated_one() -> None:
    generated = subprocess.run([sys.executable, "-m", "diffexp.samplers", "--matrix"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    docs = (ROOT / "docs" / "operators.md").read_text()
    section = docs.split("\n## Compatibility\n", 1)[1]
    assert generated in section, "docs/operators.md: paste `python -m diffexp.samplers --matrix` under Compatibility"
    assert re.search(r"\| deblur \(Blur\) \| poisson \| .*✗ \(", generated) and "| generate (none) | — |" in generated


def test_end_to_end_poisson_deblurring_with_dps(tmp_path: Path) -> None:
    run = cli([*FAST, "task=deblur", "noise=poisson", "sampler=dps", f"hydra.run.dir={tmp_path}",
               "metrics.fid=false", "metrics.lpips=false"], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in result["metrics"].values() if isinstance(v, float))
    y = torch.load(tmp_path / "measurements" / "00000.pt")["y"]
    k = (y + 1) / 2 * 255  # the measurement is Poisson counts (rate 1.0)
    assert torch.allclose(k, k.round(), atol=1e-3)
