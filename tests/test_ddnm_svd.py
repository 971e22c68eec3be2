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
from diffexp.operators.blur import Blur
from diffexp.operators.super_resolution import SuperResolution
from diffexp.models.schedule import respaced_timesteps
from diffexp.rng import per_image_noise
from diffexp.samplers.ddnm import ddnm
from tests.test_sampler_coefficients import AC, N_PIX, ORACLE, SHAPE, _gens, _measurement, _op, _rows, eps_star


def _svd_op(name: str, sigma_y: float) -> torch.nn.Module:
    """The operators beyond ``_op``'s that offer ``svd`` (one image's; the Gaussian blurs set 26–56 % of Σ, below the
    cutoff, to 0: truncation is exercised)."""
    if name in ("identity", "inpaint", "sr2", "blur_circular"):
        return _op(name, sigma_y)
    g = [torch.Generator().manual_seed(0)]
    return {
        "sr4": lambda: SuperResolution(SHAPE, g, sigma_y, factor=4),
        "bicubic2": lambda: SuperResolution(SHAPE, g, sigma_y, factor=2, downsample="bicubic"),
        "blur_reflect": lambda: Blur(SHAPE, g, sigma_y, kernel_size=5, std=1.5),
        "motion_circular": lambda: Blur(SHAPE, g, sigma_y, kernel="motion", kernel_size=5, padding="circular"),
    }[name]().double()


def _cutoff(op: torch.nn.Module) -> float:
    """The singular value below which the operator's Σ counts as 0 (blur: ``pinv_cutoff``)."""
    return op.pinv_cutoff if isinstance(op, Blur) else 1e-10


SVD_OPS = ["sr2", "sr4", "bicubic2", "blur_circular", "motion_circular", "blur_reflect"]


def official_ddnm_svd(
    x: Tensor, y: Tensor, a_mat: Tensor, sigma_y: float, eta: float, ts: list[int], generators: list[torch.Generator],
    cutoff: float = 1e-10,
) -> list[Tensor]:
    """x after every step of DDNM+ in the paper's SVD form (eqs. 17 and 51 of the authors' code), singular values
    below ``cutoff`` set to 0 and A⁺ = VΣ⁺Uᵀ of those (the authors' ``A_pinv``)."""
    u, sv, vh = torch.linalg.svd(a_mat, full_matrices=True)
    s = torch.zeros(N_PIX, dtype=torch.float64)
    s[: sv.numel()] = sv
    s = torch.where(s >= cutoff, s, torch.zeros_like(s))
    s_inv = torch.where(s > 0, 1 / s.clamp(min=1e-30), torch.zeros_like(s))
    a_pinv = vh.T[:, : sv.numel()] @ torch.diag(s_inv[: sv.numel()]) @ u.T
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



def _dense_vt(op: torch.nn.Module) -> Tensor:
    """Vᵀ as a dense (N_PIX, N_PIX) matrix: column k is ``svd_vt`` of basis image k (complex for the DFT)."""
    basis = torch.eye(N_PIX, dtype=torch.float64).reshape(N_PIX, *SHAPE)
    return op.svd_vt(basis).reshape(N_PIX, N_PIX).T


@pytest.mark.parametrize("name", ["identity", "inpaint", *SVD_OPS])
def test_svd_is_an_orthogonal_diagonalisation_of_a(name: str) -> None:
    """V is orthogonal (unitary), ``svd_v`` inverts ``svd_vt``, VᵀAᵀAV = Σ² of the dense A (off-diagonal 0), and
    ``svd_singulars`` are the dense A's singular values, those below the operator's cutoff set to 0."""
    op = _svd_op(name, 0.1)
    assert "svd" in op.capabilities
    vt = _dense_vt(op)
    eye = torch.eye(N_PIX, dtype=vt.dtype)
    torch.testing.assert_close(vt.conj().T @ vt, eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(vt @ vt.conj().T, eye, rtol=0, atol=1e-6)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op.svd_v(op.svd_vt(x)), x, rtol=0, atol=1e-6)
    a = dense_matrix(op, SHAPE)
    gram = vt @ (a.T @ a).to(vt.dtype) @ vt.conj().T  # VᵀAᵀAV
    s = torch.broadcast_to(op.svd_singulars().double(), (1, *SHAPE)).reshape(-1)  # one image
    torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), rtol=0, atol=1e-6)
    true = gram.diagonal().real.clamp(min=0).sqrt()
    kept = s > 0
    torch.testing.assert_close(s[kept], true[kept], rtol=0, atol=1e-6)
    assert bool((true[~kept] < max(_cutoff(op), 1e-5)).all())  # null space: 0 up to float32 V
    dense = torch.zeros(N_PIX, dtype=torch.float64)
    dense[: min(a.shape)] = torch.linalg.svdvals(a)
    dense = torch.where(dense >= _cutoff(op), dense, torch.zeros_like(dense))
    torch.testing.assert_close(s.sort().values, dense.sort().values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eta", [1.0, 0.85])
@pytest.mark.parametrize("name", SVD_OPS)
def test_ddnm_plus_is_the_papers_svd_form_on_structured_operators(name: str, eta: float) -> None:
    """Pooling (block DCT), bicubic and reflect Gaussian blur (separable SVD), circular blur (the DFT, complex):
    every step equals the dense SVD form with the operator's truncated Σ (float32 singular vectors: 1e-5)."""
    op = _svd_op(name, 0.1)
    n = 3
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = respaced_timesteps(1000, 10)
    states: list[dict] = []
    ddnm(ORACLE, x, timesteps=grid, generators=_gens(n), y=y, operator=op, callback=states.append, eta=eta,
         clip_denoised=False)
    expected = official_ddnm_svd(x, y, dense_matrix(op, SHAPE), 0.1, eta, grid.tolist(), _gens(n), _cutoff(op))
    assert len(states) == len(expected)
    for state, x_official in zip(states, expected):
        assert not state["x"].is_complex()
        torch.testing.assert_close(state["x"], x_official, rtol=1e-5, atol=1e-5)


def test_motion_blur_with_reflect_padding_keeps_the_smooth_fallback() -> None:
    """A reflect-padded motion blur is neither FFT-diagonal nor separable: no ``svd``."""
    op = Blur(SHAPE, [torch.Generator().manual_seed(0)], 0.1, kernel="motion", kernel_size=5)
    assert "svd" not in op.capabilities and "svd" not in Blur.capabilities


@pytest.mark.parametrize("name", ["sr2", "blur_reflect"])
def test_budget_smooth_is_the_fallback_on_an_operator_with_an_svd(name: str) -> None:
    """``budget="smooth"`` runs the worst-case fallback even where the operator offers its SVD: bit-identical to the
    same operator with ``svd`` hidden, and different from the default per-singular-value budget."""
    op = _svd_op(name, 0.1)
    n = 2
    _, y = _measurement(op, n)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = respaced_timesteps(1000, 10)
    run = lambda operator, **kw: ddnm(ORACLE, x, timesteps=grid, generators=_gens(n), y=y,  # noqa: E731
                                      operator=operator, clip_denoised=False, **kw)
    smooth = run(op, budget="smooth")
    default = run(op)
    op.capabilities = op.capabilities - {"svd"}
    assert torch.equal(smooth, run(op)) and not torch.allclose(smooth, default, atol=1e-3)
    with pytest.raises(ValueError, match=r"sampler\.budget='exact' must be one of svd, smooth"):
        run(op, budget="exact")
