import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffexp.models.schedule import previous_alphas_cumprod, respaced_betas, respaced_timesteps, sdedit_start


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


def level_matched_step(betas: np.ndarray, sigma: float) -> int:
    """Independent reference: ᾱ from the betas in float64 numpy, then bisection on the increasing noise
    level sqrt((1 − ᾱ_t)/ᾱ_t) of x_t/sqrt(ᾱ_t), keeping the nearer of the two bracketing steps."""
    ab = np.cumprod(1 - betas)
    level = np.sqrt((1 - ab) / ab)
    assert (np.diff(level) > 0).all()
    hi = int(np.searchsorted(level, sigma))
    if hi == 0:
        return 0
    if hi == len(level):
        return len(level) - 1
    return hi if level[hi] - sigma < sigma - level[hi - 1] else hi - 1


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.05, 0.1, 0.2, 0.4, 1.0, 3.0, 1e3])
def test_sdedit_start_is_the_level_matched_step(beta_schedule: str, sigma: float) -> None:
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    t = sdedit_start(sched.alphas_cumprod.double(), sigma)
    assert t == level_matched_step(sched.betas.double().numpy(), sigma)


@pytest.mark.parametrize("steps", [0, 1001])
def test_bad_step_counts_are_refused(steps: int) -> None:
    with pytest.raises(ValueError, match=f"num_steps={steps}"):
        respaced_timesteps(1000, steps)
