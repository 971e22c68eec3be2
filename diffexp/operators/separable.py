"""Exact solves for separable operators A X = R X Cᵀ (per channel) through the SVDs of R and C.

With R = U_r S_r V_rᵀ and C = U_c S_c V_cᵀ (R: m×n with m ≤ n, likewise C), A = R ⊗ C has singular
values s_r[i]·s_c[j], left vectors u_r[i] ⊗ u_c[j] and right vectors v_r[i] ⊗ v_c[j] (the SVD DDRM
uses for its separable operators, Kawar et al. 2022, appendix). Every solve is then four small matrix
products and an elementwise division: exact, deterministic, no iterations. Used by bicubic
super-resolution and Gaussian blur with reflect padding (whose 1-D factor is the band matrix of the
1-D taps times the reflect-padding matrix).

The same SVD, completed to square V_r and V_c (the right singular vectors of singular value 0 appended), is the
``svd`` capability DDNM+ budgets its noise with: ``svd_vt(x)`` = V_rᵀ X V_c, ``svd_v(z)`` = V_r Z V_cᵀ (image-shaped
coefficients, coefficient (i, j) the direction v_r[i] ⊗ v_c[j]) and ``singulars`` = s_r[i]·s_c[j] (0 on the null space).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffexp.operators.base import Weight, separable


class SeparableSVD(nn.Module):
    """The SVD of A X = R X Cᵀ, computed once in float64 (buffers follow the operator's dtype/device).

    Args:
        rows: R, (m_r, n_r) with m_r ≤ n_r.
        cols: C, (m_c, n_c) with m_c ≤ n_c.
    """

    def __init__(self, rows: Tensor, cols: Tensor) -> None:
        super().__init__()
        for name, mat in (("rows", rows), ("cols", cols)):
            if mat.shape[0] > mat.shape[1]:
                raise ValueError(f"{name} is {tuple(mat.shape)}; a separable factor must be wide or square")
            u, s, vt = torch.linalg.svd(mat.double(), full_matrices=False)
            self.register_buffer(f"u_{name}", u.float(), persistent=False)
            self.register_buffer(f"s_{name}", s.float(), persistent=False)
            self.register_buffer(f"v_{name}", vt.T.float(), persistent=False)
            # V completed by the null space of ``mat`` (right vectors of the full SVD beyond its rank m): square, orthogonal
            rest = torch.linalg.svd(mat.double(), full_matrices=True)[2][mat.shape[0] :]
            self.register_buffer(f"vfull_{name}", torch.cat([vt, rest]).T.float(), persistent=False)

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        """(w·AAᵀ + s·I)⁻¹ v: AAᵀ = U Σ² Uᵀ with U square."""
        sigma = torch.outer(self.s_rows, self.s_cols).to(v.dtype)
        coef = separable(v, self.u_rows.T, self.u_cols.T) / (aat_weight * sigma * sigma + noise_var)
        return separable(coef, self.u_rows, self.u_cols)

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        """(AᵀA + ρI)⁻¹(Aᵀy + ρz) = V[(σ ⊙ Uᵀy + ρ Vᵀz)/(σ² + ρ)]Vᵀ + (I − VVᵀ)z, no division by ρ."""
        sigma = torch.outer(self.s_rows, self.s_cols).to(z.dtype)
        vz = separable(z, self.v_rows.T, self.v_cols.T)
        coef = (sigma * separable(y, self.u_rows.T, self.u_cols.T) + rho * vz) / (sigma * sigma + rho)
        out = separable(coef, self.v_rows, self.v_cols)
        if self.v_rows.shape[0] == self.v_rows.shape[1] and self.v_cols.shape[0] == self.v_cols.shape[1]:
            return out  # V square: no null space
        return out + z - separable(vz, self.v_rows, self.v_cols)

    def pinv(self, y: Tensor, *, cutoff: float = 0.0) -> Tensor:
        """V diag(σ/(σ² + c²)) Uᵀ y: A⁺ y for c = 0 (A of full row rank), Tikhonov-regularised for c > 0."""
        sigma = torch.outer(self.s_rows, self.s_cols).to(y.dtype)
        coef = separable(y, self.u_rows.T, self.u_cols.T) * sigma / (sigma * sigma + cutoff**2)
        return separable(coef, self.v_rows, self.v_cols)

    def svd_vt(self, x: Tensor) -> Tensor:
        """Vᵀx = V_rᵀ X V_c with the square V's: the coefficients of x on v_r[i] ⊗ v_c[j], image-shaped."""
        return separable(x, self.vfull_rows.T, self.vfull_cols.T)

    def svd_v(self, z: Tensor) -> Tensor:
        """Vz = V_r Z V_cᵀ."""
        return separable(z, self.vfull_rows, self.vfull_cols)

    def singulars(self, cutoff: float = 0.0) -> Tensor:
        """Σ's diagonal on ``svd_vt``'s coefficients, (n_r, n_c): s_r[i]·s_c[j], 0 beyond either factor's rank and
        where it is below ``cutoff`` (then counted as null space, as DDRM and DDNM truncate blur singular values)."""
        rows, cols = (torch.zeros(v.shape[0], dtype=s.dtype, device=s.device) for v, s in
                      ((self.vfull_rows, self.s_rows), (self.vfull_cols, self.s_cols)))
        rows[: self.s_rows.numel()], cols[: self.s_cols.numel()] = self.s_rows, self.s_cols
        sigma = torch.outer(rows, cols)
        return torch.where(sigma >= cutoff, sigma, torch.zeros_like(sigma))
