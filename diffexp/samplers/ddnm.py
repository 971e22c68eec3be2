"""Denoising diffusion null-space model, DDNM+ (Wang, Yu & Zhang, ICLR 2023, Algorithms 1–2 and eq. 19)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

import torch
from torch import Tensor

from diffexp.rng import per_image_noise
from diffexp.samplers.base import Callback, FiniteCheck, clip_x0, grid_alphas, require_measurement
from diffexp.samplers.ddim import mixed_update
from diffexp.samplers.registry import sampler
from diffexp.settings import Allowed, Ge, UnitFloat


Budget = Literal["svd", "smooth"]
BUDGETS = get_args(Budget)


def travel_schedule(num_steps: int, travel_length: int, travel_repeat: int) -> list[int]:
    """The grid indices DDNM's time travel visits (Algorithm 3; the authors' ``get_schedule_jump``): 0 is
    the first step's x_t, ``num_steps`` the result; +1 is a denoising step, −l a jump back of l steps.

    The authors' level j (0 the last noisy level) is our index num_steps − 1 − j. Arriving at a level
    j ∈ {0, l, 2l, ...} below num_steps − l by a denoising step, the chain jumps back to j + l, r − 1
    times in all, so each such stretch of l steps is sampled r times; r = 1: 0, 1, ..., num_steps.
    """
    if travel_length < 1:
        raise ValueError(f"sampler.travel_length={travel_length} must be >= 1 (grid steps per jump back)")
    if travel_repeat < 1:
        raise ValueError(f"sampler.travel_repeat={travel_repeat} must be >= 1 (1: no time travel)")
    if travel_repeat > 1 and travel_length >= num_steps:
        raise ValueError(
            f"sampler.travel_length={travel_length} must be < the number of grid steps ({num_steps}) with "
            f"sampler.travel_repeat={travel_repeat} > 1"
        )
    jumps_left = {num_steps - 1 - j: travel_repeat - 1 for j in range(0, num_steps - travel_length, travel_length)}
    path, index = [0], 0
    while index < num_steps:
        index += 1
        path.append(index)
        if jumps_left.get(index, 0) > 0:
            jumps_left[index] -= 1
            index -= travel_length
            path.append(index)
    return path


def range_null_correction(operator: Any, x0: Tensor, y: Tensor, c2: Tensor | float) -> Tensor:
    """x̂0|y = x̂0 − Σ_t A⁺(A x̂0 − y) with Σ_t A⁺ = Aᵀ(AAᵀ + c²I)⁻¹ (DDNM+ eq. 19; see ``ddnm``).

    c = 0 is DDNM's x̂0|y = A⁺y + (I − A⁺A)x̂0 (eq. 13), computed with ``operator.pinv``.
    """
    if isinstance(c2, float) and c2 == 0:
        return x0 - operator.pinv(operator(x0) - y)
    return x0 - operator.adjoint(operator.solve_aat(operator(x0) - y, aat_weight=1.0, noise_var=c2))


def svd_budget_step(
    operator: Any,
    s: Tensor,
    x0: Tensor,
    eps: Tensor,
    y: Tensor,
    ab_prev: Tensor,
    eta: float,
    generators: Sequence[torch.Generator],
    *,
    noise: bool,
) -> tuple[Tensor, Tensor]:
    """DDNM+'s step with the noise budgeted per singular direction, A = UΣVᵀ (paper Section 3.3, eqs. 17–19;
    the authors' ``svd_operators.py``: ``Lambda`` and ``Lambda_noise``). ``s`` is ``operator.svd_singulars()`` in
    x0's dtype and device, read once per run. Returns (x_{t-1}, x̂0|y).

    With a = sqrt(ᾱ_{t-1}), σ_t = sqrt(1−ᾱ_{t-1}) and, per direction i of V, s_i its singular value:

        x̂0|y = x̂0 − V Λ Vᵀ A⁺(A x̂0 − y),   λ_i = 1 if σ_t ≥ aσ_y/s_i, else s_i σ_t sqrt(1−η²)/(aσ_y);
        x_{t-1} = a·x̂0|y + V(d1 ⊙ Vᵀz + d2 ⊙ Vᵀε̂),

    d1_i = sqrt(σ_t² − a²σ_y²/s_i²), d2_i = 0 where σ_t > aσ_y/s_i; d1_i = ησ_t, d2_i = 0 where σ_t ≤ aσ_y/s_i;
    d1_i = ησ_t, d2_i = sqrt(1−η²)σ_t on the null space (s_i = 0, untouched). The noise of y that the correction
    lets through, aλ_iσ_y/s_i, plus the fresh noise keeps the variance at exactly σ_t² in every range direction.
    ``svd_vt`` may return complex coefficients (circular blur: V the unitary DFT); every factor here is real and a
    function of Σ, symmetric under f → −f, so ``svd_v`` of them is real. Vᵀ A⁺ r is formed as Σ⁺² ⊙ Vᵀ Aᵀ r, the A⁺ of
    the (possibly truncated) Σ that ``svd_singulars`` returns, as the authors' ``A_pinv``; ``operator.pinv`` (for
    blur the Tikhonov-regularised one) is not used. For identity and masks (Σ⁺² ∈ {0, 1}) both are bit-identical.
    Deviation: the authors' code scales ε̂ in their spectral order without applying Vᵀ to it first (for
    masks and denoising, where V = I, the two agree); here ε̂ enters as Vᵀε̂. After the last step (σ_t = 0)
    no noise is added, and λ_i = 0: the range part keeps x̂0 (the paper's budget allows no noise of y there).
    """
    a, sigma_t, sigma_y = ab_prev.sqrt(), (1 - ab_prev).sqrt(), operator.sigma_y
    s_inv = torch.where(s > 0, 1 / s.clamp(min=1e-30), torch.zeros_like(s))
    noise_of_y = a * sigma_y * s_inv  # the std a correction λ_i = 1 lets through, per direction
    small = sigma_t < noise_of_y  # σ_t below that: shrink the correction (and no ε̂ in that direction)
    lam = torch.where(small, s * sigma_t * (1 - eta**2) ** 0.5 / (a * sigma_y), torch.ones_like(s))
    # Vᵀ A⁺ r = Σ⁺ Uᵀ r = Σ⁺² ⊙ Vᵀ Aᵀ r: the A⁺ of Σ as ``svd_singulars`` gives it (truncated for blur), not ``pinv``
    x0y = x0 - operator.svd_v(lam * s_inv**2 * operator.svd_vt(operator.adjoint(operator(x0) - y)))
    rest = (sigma_t**2 - noise_of_y**2).clamp(min=0).sqrt()
    d1 = torch.where(s > 0, torch.where(small, eta * sigma_t, rest), eta * sigma_t)
    d2 = torch.where(s > 0, torch.zeros_like(s), (1 - eta**2) ** 0.5 * sigma_t)
    spectral = d2 * operator.svd_vt(eps)
    if noise:
        spectral = spectral + d1 * operator.svd_vt(per_image_noise(generators, x0))
    return a * x0y + operator.svd_v(spectral), x0y


def travel_problems(settings: dict[str, Any]) -> list[str]:
    """Time travel jumps back ``travel_length`` grid steps: fewer than ``num_steps`` (with ``travel_repeat`` > 1)."""
    length, repeat, steps = (settings.get(k) for k in ("travel_length", "travel_repeat", "num_steps"))
    if all(isinstance(v, int) for v in (length, repeat, steps)) and repeat > 1 and length >= steps:
        return [
            f"sampler.travel_length={length} is invalid with sampler.travel_repeat={repeat}: allowed is "
            f"1..{steps - 1} (fewer than sampler.num_steps={steps})"
        ]
    return []


def network_calls(timesteps: Tensor, travel_length: int = 1, travel_repeat: int = 1, **hparams: object) -> int:
    """UNet evaluations per image (metrics.json ``nfe``): one per denoising step, time travel included."""
    path = travel_schedule(len(timesteps), travel_length, travel_repeat)
    return sum(q > p for p, q in zip(path, path[1:]))


@sampler(
    measurement=True,
    unet_grad=False,
    operator=frozenset({"linear", "adjoint", "pinv", "solve_aat"}),
    # Gaussian noise only: the null-space correction's Σ_t budgets Gaussian σ_y per singular value (DDNM+)
    noise=frozenset({"gaussian"}),
    network_calls=network_calls,
    sampling_steps=network_calls,
    check=travel_problems,
)


@torch.no_grad()
def ddnm(
    model: Any,
    x: Tensor,
    *,
    timesteps: Tensor,
    generators: Sequence[torch.Generator],
    y: Tensor | None = None,
    operator: Any = None,
    callback: Callback | None = None,
    eta: UnitFloat = 1.0,
    travel_length: Annotated[int, Ge(1), Allowed("an integer >= 1 (and < num_steps with travel_repeat > 1)")] = 1,
    travel_repeat: Annotated[int, Ge(1), Allowed("an integer >= 1 (1: no time travel)")] = 1,
    budget: Budget = "svd",
    clip_denoised: bool | None = None,
) -> Tensor:
    """DDNM+: replace the range-space part of Tweedie's x̂0 by A⁺y, then step to t-1 as the authors' code.

    With σ_y > 0 on an operator that offers its SVD (``svd``: identity, inpainting masks, super-resolution, circular
    blur, Gaussian blur with reflect padding) the noise is budgeted
    per singular direction exactly as the paper's SVD form (``svd_budget_step``). The other operators use the
    smooth fallback below, which budgets the worst case over all directions. ``budget="smooth"`` uses the fallback
    on every operator: a named departure from the paper (the form of diffexp before issue #22), kept because it
    scores higher where the exact budget leaves little data correction late in the run (deblurring digits 0–7:
    25.04 dB against 24.09, docs/samplers.md):

        x_{t-1} = sqrt(ᾱ_{t-1})·x̂0|y + sqrt(1−ᾱ_{t-1})·(η·z + sqrt(1−η²)·ε),   ε the network's prediction.

    Noise: x̂0|y carries Σ_t A⁺(σ_y n), with coefficient a_t = sqrt(ᾱ_{t-1}) in x_{t-1}. The paper (eq. 19,
    A = UΣVᵀ) scales the correction per singular value s_i by λ_{t,i} = min(1, s_i·σ_t/(a_t σ_y)), so that
    the noise it lets through, a_t λ_{t,i} σ_y/s_i, stays below the step's noise level σ_t = sqrt(1−ᾱ_{t-1}),
    and shrinks the step's own noise to keep the total at σ_t. Without an SVD we use its smooth form
    λ_{t,i} = s_i²/(s_i² + c_t²), c_t = a_t σ_y/σ_t, i.e. Σ_t A⁺ = Aᵀ(AAᵀ + c_t²I)⁻¹ (``operator.solve_aat``;
    the same limits: 1 for s_i ≫ c_t, → 0 for s_i ≪ c_t). The noise it lets through is at most
    κ·σ_t with κ = max_{s ≤ 1} c_t s/(s² + c_t²) (½ for c_t ≤ 1, c_t/(1+c_t²) beyond; ‖A‖ ≤ 1), so the step's
    stochastic part is scaled by sqrt(1 − κ²). σ_y = 0 gives DDNM: A x̂0|y = y exactly.

    Time travel (the paper's Algorithm 3, Section 3.3) with ``travel_repeat`` r > 1: every ``travel_length``
    l steps of the grid the chain goes back l steps by the forward diffusion q(x_{t'} | x_t),
    x_{t'} = sqrt(ᾱ_{t'}/ᾱ_t)·x_t + sqrt(1 − ᾱ_{t'}/ᾱ_t)·z, and samples those l steps again, r − 1 times
    (``travel_schedule``: the authors' ``get_schedule_jump``, RePaint's jump schedule, on our grid; their code
    re-noises the last x̂0 instead of x_t). r = 1 (default) is off. ``callback`` runs after every denoising
    step, its ``i`` counting them (monotone; ``network_calls`` = ``sampling_steps`` in all).
    """
    require_measurement("ddnm", y, operator)
    if not 0 <= eta <= 1:
        raise ValueError(f"sampler.eta={eta} must lie in [0, 1] (the noise share of the step)")
    if budget not in BUDGETS:
        raise ValueError(f"sampler.budget={budget!r} must be one of {', '.join(BUDGETS)}")
    path = travel_schedule(len(timesteps), travel_length, travel_repeat)  # bad settings fail before any compute
    sigma_y = operator.sigma_y
    ab_all, ab_prev_all = grid_alphas(model, timesteps, x)
    steps = [p for p, q in zip(path, path[1:]) if q > p]  # grid index of every denoising step
    check = FiniteCheck("ddnm", "a model producing NaN/Inf", timesteps[steps], x.device)
    by_svd = budget == "svd" and sigma_y > 0 and "svd" in operator.capabilities
    singulars = operator.svd_singulars().to(device=x.device, dtype=x.dtype) if by_svd else None
    i = 0
    for p, q in zip(path, path[1:]):
        if q < p:  # time travel from grid level p back up to q: x_q ~ q(x_q | x_p)
            ratio = ab_all[q] / ab_all[p]
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * per_image_noise(generators, x)
            continue
        t, ab, ab_prev = timesteps[p], ab_all[p], ab_prev_all[p]
        eps = model.eps(x, t)
        x0 = clip_x0(model, (x - (1 - ab).sqrt() * eps) / ab.sqrt(), clip_denoised)
        noise = p + 1 < len(timesteps)
        if by_svd:
            x, x0 = svd_budget_step(operator, singulars, x0, eps, y, ab_prev, eta, generators, noise=noise)
        elif sigma_y > 0:
            c = ab_prev.sqrt() * sigma_y / (1 - ab_prev).clamp(min=1e-20).sqrt()
            kappa = torch.where(c <= 1, torch.full_like(c, 0.5), c / (1 + c**2))
            x0 = range_null_correction(operator, x0, y, c**2)
            x = mixed_update(x0, eps, ab_prev, eta**2, generators, noise=noise, scale=(1 - kappa**2).sqrt())
        else:
            x0 = range_null_correction(operator, x0, y, 0.0)
            x = mixed_update(x0, eps, ab_prev, eta**2, generators, noise=noise)
        check(i, x=x, x0=x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
        i += 1
    return x
