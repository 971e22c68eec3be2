"""Our DDPM/DDIM steps against diffusers' schedulers, with identical model outputs and noise."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffexp.models.diffusion import DiffusionModel, tiny_unet
from diffexp.samplers.ddim import ddim
from diffexp.samplers.ddpm import ddpm
from diffexp.models.schedule import respaced_timesteps


def _unet():
    return tiny_unet(sample_size=8, channels=1, seed=0).eval().requires_grad_(False)


@torch.no_grad()
def _diffusers_loop(unet, scheduler, x, generator, **step_kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.slow  # 1000 UNet calls per chain (~7 s); the 50-step chains below run in the default suite
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_full_ddpm_chain_equals_diffusers(variance_type: str) -> None:
    unet = _unet()
    ref = DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type)
    ref.set_timesteps(1000)
    model = DiffusionModel(unet, DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = ddpm(model, x, timesteps=respaced_timesteps(1000, 1000), generators=[torch.Generator().manual_seed(7)])
    theirs = _diffusers_loop(unet, ref, x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert ours.abs().max() > 0.1  # a real sample, not a degenerate zero


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_respaced_ddpm_equals_diffusers_with_the_same_grid(variance_type: str) -> None:
    unet = _unet()
    grid = respaced_timesteps(1000, 50)
    ref = DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type)
    ref.set_timesteps(timesteps=grid.tolist())
    model = DiffusionModel(unet, DDPMScheduler(num_train_timesteps=1000, variance_type=variance_type))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = ddpm(model, x, timesteps=grid, generators=[torch.Generator().manual_seed(3)])
    theirs = _diffusers_loop(unet, ref, x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert ours.abs().max() > 0.1


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [50, pytest.param(1000, marks=pytest.mark.slow)])
def test_ddim_equals_diffusers(eta: float, steps: int) -> None:
    unet = _unet()
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading")
    ref.set_timesteps(steps)
    model = DiffusionModel(unet, DDPMScheduler(num_train_timesteps=1000))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    grid = ref.timesteps.clone()
    ours = ddim(model, x, timesteps=grid, generators=[torch.Generator().manual_seed(5)], eta=eta)
    theirs = _diffusers_loop(unet, ref, x, torch.Generator().manual_seed(5), eta=eta)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
