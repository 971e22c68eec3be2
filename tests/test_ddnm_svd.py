"""DDNM+'s per-singular-value noise budget against the paper's SVD form written out densely (issue #22).

The official ``svd_ddnm.py`` loop with ``svd_operators.py``'s ``Lambda`` and ``Lambda_noise`` is written here on
a dense A = UΣVᵀ from ``torch.linalg.svd`` (no code of the sampler), on the Gaussian oracle of
``tests/test_sampler_coefficients.py``; the fresh noise comes from copies of the run's per-image generators.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffexp.models.gaussian import dense_matrix
from diffexp.models.schedule import respaced_timesteps
from diffexp.rng import per_image_noise
from diffexp.samplers.ddnm import ddnm
from tests.test_sampler_coefficients import AC, N_PIX, ORACLE, SHAPE, _gens, _measurement, _op, _rows, eps_star


def official_ddnm_svd(
    x: Tensor, y: Tensor, a_mat: Tensor, sigma_y: float, eta: float, ts: list[int], generators: list[torch.Generator]
) -> list[Tensor]:
    """x after every step of DDNM+ in the paper's SVD form (eqs. 17 and 51 of the authors' code)."""
    _, sv, vh = torch.linalg.svd(a_mat, full_matrices=True)
    s = torch.zeros(N_PIX, dtype=torch.float64)
    s[: sv.numel()] = sv
    s = torch.where(s > 1e-10, s, torch.zeros_like(s))
    s_inv = torch.where(s > 0, 1 / s.clamp(min=1e-30), torch.zeros_like(s))
    a_pinv = torch.linalg.pinv(a_mat)
    states = []
    for i, t in enumerate(ts):
        ab = AC[t]
        ab_next = AC[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        a, sigma_t = ab_next.sqrt(), (1 - ab_next).sqrt()
        eps = _rows(eps_star(x, ab))
        x0 = (_rows(x) - (1 - ab).sqrt() * eps) / ab.sqrt()
        lam = torch.ones(N_PIX, dtype=torch.float64)
        change = sigma_t < a * sigma_y * s_inv
        lam = torch.where(change, s * sigma_t * (1 - eta**2) ** 0.5 / a / sigma_y, lam)
        r = x0 @ a_mat.T - _rows(y)
        x0_hat = x0 - (r @ a_pinv.T) @ vh.T @ torch.diag(lam) @ vh
        d1 = torch.full((N_PIX,), float(sigma_t * eta), dtype=torch.float64)
        d2 = torch.full((N_PIX,), float(sigma_t * (1 - eta**2) ** 0.5), dtype=torch.float64)
        d2 = torch.where(change, torch.zeros_like(d2), d2)
        over = sigma_t > a * sigma_y * s_inv
        d1 = torch.where(over, (sigma_t**2 - a**2 * sigma_y**2 * s_inv**2).clamp(min=0).sqrt(), d1)
        d2 = torch.where(over, torch.zeros_like(d2), d2)
        null = s == 0
        d1 = torch.where(null, sigma_t * eta, d1)
        d2 = torch.where(null, sigma_t * (1 - eta**2) ** 0.5, d2)
        noise = per_image_noise(generators, x) if i + 1 < len(ts) else torch.zeros_like(x)
        spectral = _rows(noise) @ vh.T * d1 + eps @ vh.T * d2
        x = (a * x0_hat + spectral @ vh).reshape(x.shape)
        states.append(x)
    return states


@pytest.mark.parametrize("eta", [1.0, 0.85])
@pytest.mark.parametrize(("name", "sigma_y"), [("identity", 0.1), ("inpaint", 0.1), ("inpaint", 0.5)])
def test_ddnm_plus_is_the_papers_svd_form(name: str, sigma_y: float, eta: float) -> None:
    """Every step equals the dense SVD form: both branches of the budget (σ_t above and below aσ_y/s_i) occur on
    the grid, and inpainting's null space keeps the full DDIM(η) noise."""
    op = _op(name, sigma_y)
    n = 3
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = respaced_timesteps(1000, 10)
    states: list[dict] = []
    ddnm(ORACLE, x, timesteps=grid, generators=_gens(n), y=y, operator=op, callback=states.append, eta=eta,
         clip_denoised=False)
    expected = official_ddnm_svd(x, y, dense_matrix(op, SHAPE), sigma_y, eta, grid.tolist(), _gens(n))
    assert len(states) == len(expected)
    for state, x_official in zip(states, expected):
        torch.testing.assert_close(state["x"], x_official, rtol=1e-9, atol=1e-9)

