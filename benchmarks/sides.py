"""The contenders, each a function ``(..., steps) -> images in [-1, 1]`` over the same UNet (``diffexp_solve``:
the solved batch, its images ``.x``).

- ``diffexp_solve``: ``diffexp.solve.solve_batch``, the function ``run`` solves each batch with (measure,
  x_T or SDEdit start, sample, clamp).
- ``diffusers_ddpm``: ``diffusers.DDPMPipeline`` with the same UNet and a copy of its scheduler.
- ``deepinv_dps``: deepinv's ``DPS`` with the UNet wrapped by deepinv's own ``ScoreModelWrapper``.
- ``official_dps``: a straight re-implementation of the official DPS loop (Chung et al. 2023, their
  ``p_sample_loop`` with ``PosteriorSampling``): plain tensors, coefficient tables, one norm over
  the whole batch tensor (batch-coupled; run it at batch 1).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler
from torch import Tensor

from benchmarks.common import generators, with_steps
from diffexp.models.diffusion import DiffusionModel
from diffexp.models.schedule import previous_alphas_cumprod, respaced_betas, respaced_timesteps
from diffexp.solve import Problem, Solved, initial_state, measure, solve_batch


def diffexp_solve(
    model: DiffusionModel, problem: Problem, seed: int, indices: list[int], steps: int, truth: Tensor | None = None
) -> Solved:
    """One batch as ``run`` solves it: the images' generators, then ``solve_batch`` on a ``steps``-step grid
    (``truth``: the images to measure; None: generation)."""
    gens = generators(seed, indices, problem.grid.device)
    return solve_batch(with_steps(problem, model, steps), model, truth, gens)


def peer_inputs(
    model: DiffusionModel, problem: Problem, seed: int, indices: list[int], truth: Tensor
) -> tuple[Any, Tensor, Tensor, list[torch.Generator]]:
    """(operator, y, x_T, generators) that ``diffexp_solve(..., truth)`` draws, for a peer to start from: the
    measurement first, then the initial state, from the same per-image generators (left where they are)."""
    gens = generators(seed, indices, problem.grid.device)
    operator, y = measure(problem, model, truth, gens)
    return operator, y, initial_state(problem, model, y, gens), gens


def solved_for(solved: Solved, y: Tensor) -> Tensor:
    """The output of a diffexp batch, checked to be solved for the measurement ``y`` its peers were given."""
    if solved.y is None or not torch.equal(solved.y, y):
        raise RuntimeError("diffexp solved a different measurement than its peers were given (not the same y)")
    return solved.x


def diffusers_pipeline(model: DiffusionModel) -> DDPMPipeline:
    """``DDPMPipeline`` around the model's UNet, with its own copy of the scheduler, progress bar off."""
    pipe = DDPMPipeline(unet=model.unet, scheduler=DDPMScheduler.from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_ddpm(pipe: DDPMPipeline, batch: int, seed: int, steps: int) -> Tensor:
    """``pipe(batch_size, num_inference_steps, generator, output_type="pt")`` mapped back to [-1, 1]."""
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    images = pipe(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="pt").images
    return images * 2 - 1


def deepinv_weight(model: DiffusionModel, steps: int, zeta: float) -> float:
    """deepinv's DPS ``weight`` λ that gives the same total guidance as diffexp's ζ over ``steps``.

    diffexp moves x by ζ·∇‖y − A x̂0‖ on every step (ζ·N in total). deepinv carries images in [0, 1]
    (a norm half as large) and scales the guided score by its VP step coefficient
    s_t s_{t'}(σ_t² − σ_{t'}²) ≈ −d ln ᾱ, which sums to ln(1/ᾱ_T) over the chain: λ/2·ln(1/ᾱ_T) = ζ·N.
    """
    return 2 * zeta * steps / math.log(1 / float(model.alphas_cumprod[-1]))


def deepinv_dps(
    model: DiffusionModel, operator: Any, y: Tensor, x: Tensor, seed: int, weight: float, steps: int
) -> Tensor:
    """deepinv ``DPS(solver="ddpm")`` on the same UNet, operator and measurement, started from ``x``.

    deepinv works in [0, 1]: the linear A applied to (x + 1)/2 gives the measurement (y + A·1)/2.
    Its ``num_steps`` counts time points, ending at t = 0 without a UNet call: ``steps + 1`` points
    make ``steps`` UNet evaluations, as diffexp's ``steps``.
    """
    import deepinv as dinv

    denoiser = dinv.models.ScoreModelWrapper(
        functools.partial(model.unet, return_dict=False),
        prediction_type=model.prediction_type,
        clip_output=model.clip_sample,
        scale_t=model.alphas_cumprod.sqrt().float(),
        variance_preserving=True,
        takes_integer_time=True,
        n_timesteps=model.num_train_timesteps,
        device=x.device,
    )
    physics = dinv.physics.LinearPhysics(A=operator.forward, A_adjoint=operator.adjoint)
    y01 = (y + operator(torch.ones_like(x))) / 2
    rng = torch.Generator(device=x.device).manual_seed(seed)
    dps = dinv.sampling.DPS(denoiser, solver="ddpm", num_steps=steps + 1, weight=weight, device=x.device, rng=rng)
    with torch.no_grad():
        out = dps(y01, physics, x_init=x.double(), seed=seed)
    return (out.float() * 2 - 1).clamp(-1, 1)


def official_dps(
    model: DiffusionModel, operator: Any, y: Tensor, x: Tensor, seed: int | torch.Generator, zeta: float, steps: int
) -> Tensor:
    """The official DPS loop: respaced DDPM coefficient tables, x̂0 clipped, ``norm = ‖y − A(x̂0)‖`` over
    the whole batch tensor, ``x_{t-1} = p_sample(x_t) − ζ·∂norm/∂x_t``; model called at the original t.
    The step noise comes from ``seed`` (or from a given generator)."""
    grid = respaced_timesteps(model.num_train_timesteps, steps)
    ac = model.alphas_cumprod.cpu()
    betas = respaced_betas(ac, grid)
    ab, ab_prev = ac[grid], previous_alphas_cumprod(ac, grid)
    table = {
        "recip": (1 / ab).sqrt(),
        "recipm1": (1 / ab - 1).sqrt(),
        "coef1": betas * ab_prev.sqrt() / (1 - ab),
        "coef2": (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab),
        "std": ((1 - ab_prev) / (1 - ab) * betas).sqrt(),
    }
    table = {k: v.to(device=x.device, dtype=x.dtype) for k, v in table.items()}
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator(device=x.device).manual_seed(seed)
    t_model = grid.to(x.device)
    for i in range(len(grid)):
        x = x.detach().requires_grad_(True)
        eps = model.unet(x, t_model[i].expand(x.shape[0])).sample
        x0 = (table["recip"][i] * x - table["recipm1"][i] * eps).clamp(-1, 1)
        mean = table["coef1"][i] * x0 + table["coef2"][i] * x
        noise = torch.randn(x.shape, generator=generator, device=x.device) if i + 1 < len(grid) else 0
        x_next = mean + table["std"][i] * noise
        norm = torch.linalg.norm(y - operator(x0))
        (grad,) = torch.autograd.grad(norm, x)
        x = (x_next - zeta * grad).detach()
    return x.clamp(-1, 1)
