"""Measurement operators: ``nn.Module``s with ``forward`` (A) and, for linear ones, ``adjoint`` (Aᵀ).

Measurements are y = A(x) + σ_y·n with n ~ N(0, I) in [-1, 1] image units (the DPS convention:
σ_y = 0.05 here is 0.025 in [0, 1] units), or drawn by the noise model the operator is given (``noise``: the config
group ``noise=gaussian|poisson|poisson_gaussian``, ``diffexp.noise``). Random parameters (masks, motion kernels) are
drawn once per image, at construction, from that image's generator, and stay fixed for the whole run.

Every ``Operator`` (possibly nonlinear: ``forward``, and ``vjp`` by autograd) declares its settings as typed keyword parameters of
its constructor (``diffexp.settings``), the checks that need the image shape or several settings in ``check``,
and what it offers the samplers in ``capabilities`` (words of ``CAPABILITIES``), which every concrete subclass
states itself. Every ``LinearOperator`` offers what the posterior samplers need (shapes: x is (B, C, H, W), y is
A's output; weights are Python floats or tensors broadcastable as (B, 1, 1, 1)):

- ``forward(x)``: A x;  ``adjoint(y)``: Aᵀ y, explicit (no autograd graph);
- ``vjp(x, v)``: (∂A/∂x)ᵀ v, which for a linear A is ``adjoint(v)`` exactly (every operator has one: nonlinear
  ones by autograd, see ``Operator.vjp``; those that declare ``differentiable`` offer it to the samplers);
- ``pinv(y)``: A⁺ y, the Moore–Penrose pseudo-inverse (blur: a regularised one, see ``Blur``);
- ``solve_aat(v, aat_weight=w, noise_var=s)``: (w·AAᵀ + s·I)⁻¹ v in measurement space (ΠGDM,
  ScoreALD's σ_y²I + γ_t²AAᵀ);
- ``prox(z, y, rho=ρ)``: argmin_x ‖y − A x‖² + ρ‖x − z‖² = (AᵀA + ρI)⁻¹(Aᵀy + ρz), ρ > 0 (DiffPIR);
- ``image_parameters(j)``: image j's parameters (mask, kernel) as saved in ``measurements/<j>.pt``;
- ``baseline(y)``: the measurement mapped to image space without a prior (what the baseline metrics score).

Each subclass solves in closed form where A has the structure for it (identity, masks, average
pooling, circular blur by FFT, separable SVDs); the generic solvers below run conjugate gradients on A and Aᵀ,
image by image (per-image step sizes and stopping), so a result never depends on its batch.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from diffexp.noise.base import NoiseModel
from diffexp.noise.gaussian import Gaussian
from diffexp.settings import NonNegativeFloat, problems, settings_model, valid_values

Weight = float | Tensor
# What an operator can offer the samplers (``Operator.capabilities``; a sampler's ``@sampler(operator=...)``
# names those it needs): a linear A, its explicit adjoint Aᵀ, A⁺, (w·AAᵀ + s·I)⁻¹, the prox of ‖y − A·‖², and
# ``differentiable``: a useful vector-Jacobian product ``vjp(x, v)`` (the adjoint for a linear A; autograd, or a
# documented surrogate such as a straight-through gradient, for a nonlinear one); ``svd``: A = UΣVᵀ with
# ``svd_vt(x)`` = Vᵀx, ``svd_v(z)`` = Vz (V orthogonal; or unitary with complex coefficients, ``svd_v`` then returning
# the real part, which drops only rounding after real factors that are functions of Σ: circular blur's DFT) and
# ``svd_singulars()`` = Σ's diagonal broadcastable to ``svd_vt(x)`` (0 on the null space, and where the operator
# truncates tiny singular values: blur below ``pinv_cutoff``, as DDRM/DDNM); DDNM+ applies A⁺ = VΣ⁺Uᵀ of that Σ as
# Σ⁺² ⊙ Vᵀ(Aᵀ r) (its per-direction noise budget). An instance whose settings give A that structure adds the word
# to its own ``capabilities`` (``Blur``: circular padding, or a Gaussian with reflect padding).
CAPABILITIES = frozenset({"linear", "adjoint", "pinv", "solve_aat", "prox", "differentiable", "svd"})
PROVIDED = ("image_shape", "generators")  # constructor arguments that run() passes itself: not settings
PREFIX = "task.operator."  # where the settings live in the config


def separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ colsᵀ`` over the last two axes: a separable linear map of images as two matmuls, whose
    backward is deterministic on CUDA (reflect-pad and bicubic backward kernels are not)."""
    return rows.to(x.dtype) @ x @ cols.to(x.dtype).T


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-image inner products ⟨a_i, b_i⟩, shaped (B, 1, ..., 1)."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *, tol: float = 1e-6, max_iter: int = 500
) -> Tensor:
    """Solve M x = b for a symmetric positive-definite M given as ``apply(x) = M x``, per image.

    Every image (row) has its own step sizes and stops on its own once ‖b − M x‖ ≤ tol·‖b‖ (its later
    updates are zero), so its solution does not depend on the rest of the batch. At most ``max_iter``
    iterations (Hestenes & Stiefel 1952; Nocedal & Wright, Algorithm 5.2).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = batch_dot(r, r)
    stop = tol**2 * batch_dot(b, b)
    for _ in range(max_iter):
        active = rr > stop
        if not bool(active.any()):
            break
        mp = apply(p)
        pmp = batch_dot(p, mp)
        alpha = torch.where(active, rr / torch.where(active, pmp, 1), 0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = batch_dot(r, r)
        beta = torch.where(active, rr_new / torch.where(active, rr, 1), 0)
        p = r + beta * p
        rr = rr_new
    return x


class Operator(nn.Module, metaclass=ABCMeta):
    """A measurement y = A(x) + σ_y·n for a forward map A, linear or not.

    Args:
        image_shape: (C, H, W) of the images A acts on.
        generators: one generator per image of the batch this operator serves.
        sigma_y: Gaussian measurement noise standard deviation, [-1, 1] units: the noise when ``noise`` is None.
        noise: the noise model that draws y from A(x) (``diffexp.noise``); None: ``Gaussian(sigma_y)``. A Gaussian
            part left null (``noise.sigma: null``, the config's default) is ``sigma_y`` (``NoiseModel.bind``); one
            given must agree with it. A model without one (``noise=poisson``) leaves ``sigma_y`` unused.

    ``sigma_y`` (the attribute) is the noise model's ``sigma_y``: σ for Gaussian noise, an effective σ for the others
    (Poisson: the standard deviation of a white pixel, ``diffexp.noise.poisson.Poisson``), for code that needs one
    noise level (the evaluation's divergence check, SDEdit, the Gaussian-only samplers).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()  # forward only

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a concrete subclass (one with a ``forward``) that does not declare its own ``capabilities``."""
        super().__init_subclass__(**kwargs)
        if getattr(cls.forward, "__isabstractmethod__", False):
            return
        if "capabilities" not in vars(cls):
            raise TypeError(f"{cls.__qualname__} must declare capabilities: ClassVar[frozenset[str]], a subset of "
                            f"{', '.join(sorted(CAPABILITIES))} (frozenset() for forward only)")
        caps = cls.capabilities
        if not isinstance(caps, frozenset) or not caps <= CAPABILITIES:
            raise TypeError(f"{cls.__qualname__}.capabilities={caps!r}: allowed is a frozenset of "
                            f"{', '.join(sorted(CAPABILITIES))}")

    def __init__(
        self,
        image_shape: Sequence[int],
        generators: Sequence[torch.Generator],
        sigma_y: NonNegativeFloat,
        noise: NoiseModel | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.batch_size = len(generators)
        self._require_valid(sigma_y=sigma_y)
        if noise is not None and not isinstance(noise, NoiseModel):
            raise TypeError(f"task.operator.noise={noise!r}: a diffexp.noise model (noise=gaussian|poisson|...)")
        own = getattr(noise, "sigma", None)
        if own is not None and own != float(sigma_y):
            raise ValueError(f"task.operator.sigma_y={sigma_y} disagrees with noise.sigma={own}: set task.sigma_y "
                             "(noise.sigma: null follows it)")
        self.noise = Gaussian(float(sigma_y)) if noise is None else noise.bind(float(sigma_y))

    @property
    def sigma_y(self) -> float:
        """The noise model's σ in [-1, 1] units (effective for non-Gaussian noise: class docstring)."""
        return self.noise.sigma_y

    @classmethod
    def check(cls, image_shape: tuple[int, int, int], settings: dict[str, Any]) -> list[str]:
        """Problems of ``settings`` (the ``task.operator`` values) that need the image shape (C, H, W) or several
        settings at once, as ``"task.operator.<key>=<value> is invalid: allowed is <what>"``; none by default."""
        return []

    @classmethod
    def valid_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``settings`` that are settings of ``cls`` and pass their typed parameter: what ``check``
        may rely on (the others are reported by the settings model)."""
        return valid_values(settings_model(cls, PROVIDED), settings)

    def _require_valid(self, **settings: Any) -> None:
        """Raise ``ValueError`` naming every one of ``settings`` (constructor arguments) that the typed parameters
        or ``check`` refuse: the config validation's messages, for direct construction too."""
        found = problems(settings_model(type(self), PROVIDED), settings, PREFIX)
        found += type(self).check(self.image_shape, settings)
        if found:
            raise ValueError("; ".join(found))

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """A(x)."""

    def vjp(self, x: Tensor, v: Tensor) -> Tensor:
        """(∂A/∂x)ᵀ v at x, by autograd through ``forward`` (no graph kept: the result is a plain tensor; it works
        under ``torch.no_grad`` too). An operator offers it to the samplers by declaring ``differentiable``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=v.to(x.dtype), create_graph=False)
        return grad

    def align(self, x: Tensor, truth: Tensor) -> Tensor | None:
        """For an A whose measurement cannot tell some images apart (phase retrieval: shifts, a 180° rotation, a
        global sign), the image among those equivalent to ``x`` that is closest to ``truth``; the metrics then
        report ``aligned_psnr`` (``diffexp.evaluation.metrics.Metrics``). None (the default): no such ambiguity."""
        return None

    def image_parameters(self, j: int) -> dict[str, Tensor]:
        """The parameters of image ``j`` of the batch (none by default)."""
        if not 0 <= j < self.batch_size:
            raise IndexError(f"image {j} is outside this operator's batch of {self.batch_size}")
        return {}

    def measure(self, x: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """y drawn by the noise model from A(x), per image (Gaussian: A(x) + σ_y·n)."""
        return self.noise.sample(self.forward(x), generators)

    def baseline(self, y: Tensor) -> Tensor:
        """The measurement mapped back to image space without a prior (here y itself, for image-shaped y)."""
        return y


class PixelBasisSVD:
    """The ``svd`` methods of an A whose singular vectors are the pixels (U = V = I: identity, masks); the
    operator adds ``svd_singulars``."""

    def svd_vt(self, x: Tensor) -> Tensor:
        """Vᵀx = x."""
        return x

    def svd_v(self, z: Tensor) -> Tensor:
        """Vz = z."""
        return z


class LinearOperator(Operator):
    """A linear A with the solvers above; every solve has a conjugate-gradient fallback on A and Aᵀ."""

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"linear", "adjoint", "pinv", "solve_aat", "prox", "differentiable"}
    )
    cg_tol: float = 1e-6  # relative residual at which conjugate gradients stop (float32 reaches it)
    cg_max_iter: int = 500  # solution error ≲ 2e-4 at condition numbers ~1e4 (blur with ρ or s = 1e-4)

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ y."""

    def vjp(self, x: Tensor, v: Tensor) -> Tensor:
        """(∂A/∂x)ᵀ v = Aᵀ v, the explicit adjoint (x is not used): bit-identical to ``adjoint(v)``."""
        return self.adjoint(v)

    def solve_aat(self, v: Tensor, *, aat_weight: Weight, noise_var: Weight) -> Tensor:
        """(w·AAᵀ + s·I)⁻¹ v by conjugate gradients in measurement space."""
        return conjugate_gradient(
            lambda u: aat_weight * self.forward(self.adjoint(u)) + noise_var * u,
            v,
            tol=self.cg_tol,
            max_iter=self.cg_max_iter,
        )

    def prox(self, z: Tensor, y: Tensor, *, rho: Weight) -> Tensor:
        """argmin_x ‖y − A x‖² + ρ‖x − z‖² = (AᵀA + ρI)⁻¹(Aᵀy + ρz), by conjugate gradients from z."""
        return conjugate_gradient(
            lambda u: self.adjoint(self.forward(u)) + rho * u,
            self.adjoint(y) + rho * z,
            z,
            tol=self.cg_tol,
            max_iter=self.cg_max_iter,
        )

    def pinv(self, y: Tensor) -> Tensor:
        """A⁺ y = Aᵀ(AAᵀ)⁻¹ y, for A of full row rank (operators without it override this)."""
        return self.adjoint(self.solve_aat(y, aat_weight=1.0, noise_var=0.0))
