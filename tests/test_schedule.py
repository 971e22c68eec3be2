import pytest
import torch
from diffusers import DDPMScheduler

from diffexp.schedule import previous_alphas_cumprod, respaced_betas, respaced_timesteps, sdedit_start


def test_full_grid_is_the_whole_chain() -> None:
    assert torch.equal(respaced_timesteps(1000, 1000), torch.arange(999, -1, -1))


@pytest.mark.parametrize("steps", [1, 2, 10, 50, 200, 999])
def test_respaced_grid_is_even_decreasing_and_spans_the_chain(steps: int) -> None:
    grid = respaced_timesteps(1000, steps)
    assert len(grid) == steps and grid[0] == 999
    assert (grid[:-1] > grid[1:]).all()
    if steps > 1:
        assert grid[-1] == 0
        gaps = grid[:-1] - grid[1:]
        assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("steps", [10, 100, 250])
def test_respacing_keeps_alpha_bar_at_kept_steps(steps: int) -> None:
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    grid = respaced_timesteps(1000, steps)
    betas = respaced_betas(ab, grid)
    # the respaced chain's cumulative product, built from its own betas (first step last in the grid)
    chain = torch.cumprod(1 - betas.flip(0), 0).flip(0)
    torch.testing.assert_close(chain, ab[grid], rtol=1e-12, atol=1e-12)
    assert previous_alphas_cumprod(ab, grid)[-1] == 1


def test_truncated_grid_for_sdedit() -> None:
    grid = respaced_timesteps(1000, 20, t_max=99)
    assert grid[0] == 99 and grid[-1] == 0 and len(grid) == 20
    assert len(respaced_timesteps(1000, 500, t_max=9)) == 10


def test_sdedit_start_matches_noise_level() -> None:
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    t = sdedit_start(ab, 0.2)
    level = ((1 - ab[t]) / ab[t]).sqrt()
    assert abs(level - 0.2) < 0.01


@pytest.mark.parametrize("steps", [0, 1001])
def test_bad_step_counts_are_refused(steps: int) -> None:
    with pytest.raises(ValueError, match=f"num_steps={steps}"):
        respaced_timesteps(1000, steps)
