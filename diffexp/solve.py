"""One batch of one problem: measure, initial state, sample, clamp — the public function ``run`` and the
benchmarks call, so that both solve a batch the same way.

``Problem.from_config`` builds what stays fixed over a run (the sampler with its hyperparameters bound, its
declaration, the time grid, the task's operator factory, SDEdit or not); ``solve_batch`` then solves the images
of one batch from their generators. Every draw of image i comes from ``generators[i]`` (``diffexp.rng``):
the operator's random parameters and the measurement noise first, then the sampler's noise.

``solve_samples`` solves a batch of (image, sample) pairs (``num_samples=K``): each distinct image is measured once
from its own stream, and each pair is sampled from its own (``diffexp.rng``: sample 0 continues the image's stream,
sample k ≥ 1 has ``sample_generator``), so all samples of an image share y and the operator's parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from diffexp.errors import SamplingDivergedError
from diffexp.models.prior import Prior
from diffexp.models.schedule import respaced_timesteps, sdedit_start
from diffexp.rng import image_generator, sample_generator
from diffexp.samplers.base import Callback
from diffexp.samplers.registry import GRID_KEYS, SamplerSpec, spec_of


@dataclass(frozen=True)
class Problem:
    """What a run solves, the same for every batch.

    Attributes:
        sample: the sampler function with its hyperparameters bound (``functools.partial``).
        spec: its declaration (``@sampler``).
        grid: the decreasing timesteps it runs on.
        operator_factory: ``task.operator`` as a partial of (image_shape, generators); None: generation.
        sdedit: an unconditional sampler started from the measurement at the grid's first level.
    """

    sample: functools.partial
    spec: SamplerSpec
    grid: Tensor
    operator_factory: Callable[..., Any] | None
    sdedit: bool

    @classmethod
    def from_config(cls, cfg: DictConfig, model: Prior, device: torch.device) -> Problem:
        """From the composed config's ``sampler`` and ``task`` nodes (checked by ``diffexp.validate``)."""
        resolved = OmegaConf.create(OmegaConf.to_container(cfg.sampler, resolve=True))  # ${task...} needs the root
        sample = instantiate(OmegaConf.masked_copy(resolved, [k for k in resolved if k not in GRID_KEYS]))
        spec = spec_of(sample)
        if spec is None:
            raise TypeError(f"sampler._target_={cfg.sampler._target_!r} is not a declared sampler (@sampler)")
        operator_factory = instantiate(cfg.task.operator) if cfg.task.operator is not None else None
        sdedit = operator_factory is not None and not spec.measurement
        t_start = cfg.sampler.get("t_start")
        if sdedit and t_start is None:
            t_start = sdedit_start(model.alphas_cumprod, cfg.task.sigma_y)
        grid = respaced_timesteps(model.num_train_timesteps, int(cfg.sampler.num_steps), t_max=t_start).to(device)
        return cls(sample, spec, grid, operator_factory, sdedit)

    @property
    def network_calls(self) -> int:
        """Network evaluations per image (``metrics.json`` ``nfe``)."""
        return int(self.spec.network_calls(self.grid, **self.sample.keywords))

    @property
    def sampling_steps(self) -> int:
        """Callbacks per batch (progress bar, W&B ``sampling/step``)."""
        return int(self.spec.sampling_steps(self.grid, **self.sample.keywords))


@dataclass(frozen=True)
class Solved:
    """A solved batch: the output in [-1, 1] (float32), and the operator and measurement it was solved for.

    From ``solve_samples`` also: ``images``, the distinct image indices of the batch in first-seen order, and
    ``rows``, the position in ``images`` of each output row's image (empty from ``solve_batch``)."""

    x: Tensor
    y: Tensor | None
    operator: Any
    images: tuple[int, ...] = ()
    rows: tuple[int, ...] = ()


def measure(
    problem: Problem, model: Prior, truth: Tensor, generators: Sequence[torch.Generator]
) -> tuple[Any, Tensor]:
    """The batch's operator (its random parameters drawn per image) and measurement y = A(x) + noise."""
    operator = problem.operator_factory(image_shape=model.image_shape, generators=generators).to(truth.device)
    return operator, operator.measure(truth, generators)


def initial_state(
    problem: Problem, model: Prior, y: Tensor | None, generators: Sequence[torch.Generator]
) -> Tensor:
    """x at the grid's first level: sqrt(ᾱ_t)·y for SDEdit, else standard normal noise per image."""
    if problem.sdedit:
        return model.alpha_bar(problem.grid[:1], y).sqrt() * y
    device = problem.grid.device
    return torch.stack([torch.randn(model.image_shape, generator=g, device=device) for g in generators])


def _diagnose(err: SamplingDivergedError, model: Prior, x: Tensor, t: Tensor) -> Exception:
    """A NaN/Inf is blamed on the sampler's step size by default; say so when the model itself produced it."""
    with torch.no_grad():
        eps = model.eps(x, t)
    if torch.isfinite(eps).all():
        return err
    return SamplingDivergedError(
        f"the model ({model.name}) produced NaN/Inf at the first step (t={int(t)}) from finite inputs: "
        "its weights are likely corrupted (the sampler's settings are not the cause)"
    )


def solve_batch(
    problem: Problem,
    model: Prior,
    truth: Tensor | None,
    generators: Sequence[torch.Generator],
    *,
    callback: Callable[[dict[str, Any], Any, Tensor | None], None] | None = None,
) -> Solved:
    """Measure ``truth`` (None: generation), start, sample and clamp; ``callback(state, operator, y)`` runs after
    every sampling step."""
    operator = y = None
    if problem.operator_factory is not None:
        operator, y = measure(problem, model, truth, generators)
    return _sample(problem, model, operator, y, generators, callback)


def distinct_images(pairs: Sequence[tuple[int, int]]) -> list[int]:
    """The image indices of (image, sample) ``pairs``, each once, in first-seen order."""
    return list(dict.fromkeys(i for i, _ in pairs))


def solve_samples(
    problem: Problem,
    model: Prior,
    truth: Tensor | None,
    pairs: Sequence[tuple[int, int]],
    *,
    seed: int,
    callback: Callable[[dict[str, Any], Any, Tensor | None], None] | None = None,
) -> Solved:
    """Posterior samples of (image i, sample k) ``pairs``: ``truth`` holds the images ``distinct_images(pairs)``
    (None: generation). Each image is measured once, from ``image_generator(seed, i)``; the row of (i, k) then
    samples from that generator's continuation for k = 0 and from ``sample_generator(seed, i, k)`` for k ≥ 1, with
    an operator whose parameters are drawn again from image i's stream (so equal to the measurement's)."""
    device = problem.grid.device
    images = distinct_images(pairs)
    position = {i: n for n, i in enumerate(images)}
    rows = tuple(position[i] for i, _ in pairs)
    streams = [image_generator(seed, i, device) for i in images]
    operator = y = None
    if problem.operator_factory is not None:
        operator, y = measure(problem, model, truth, streams)
    generators = [streams[position[i]] if k == 0 else sample_generator(seed, i, k, device) for i, k in pairs]
    if operator is not None and rows != tuple(range(len(images))):  # several samples of an image: one row each
        fresh = [image_generator(seed, i, device) for i, _ in pairs]
        operator = problem.operator_factory(image_shape=model.image_shape, generators=fresh).to(truth.device)
        y = y[list(rows)]
    solved = _sample(problem, model, operator, y, generators, callback)
    return Solved(solved.x, solved.y, solved.operator, tuple(images), rows)


def _sample(
    problem: Problem,
    model: Prior,
    operator: Any,
    y: Tensor | None,
    generators: Sequence[torch.Generator],
    callback: Callable[[dict[str, Any], Any, Tensor | None], None] | None,
) -> Solved:
    """Initial state, sampling and clamping of a measured batch (one generator per row)."""
    x = initial_state(problem, model, y, generators)
    step: Callback | None = None if callback is None else functools.partial(_forward, callback, operator, y)
    try:
        out = problem.sample(model, x, timesteps=problem.grid, generators=generators, y=y, operator=operator,
                             callback=step)
    except SamplingDivergedError as err:
        raise _diagnose(err, model, x, problem.grid[0]) from err
    return Solved(out.float().clamp(-1, 1), y, operator)


def _forward(callback: Callable[..., None], operator: Any, y: Tensor | None, state: dict[str, Any]) -> None:
    callback(state, operator, y)
