"""Per-image randomness: every draw of image i (its operator's parameters, its noise, its sampler's noise) comes
from image i's own ``torch.Generator``, so a result never depends on which other images share its batch.

With ``num_samples=K`` posterior samples per measurement, sample k of image i draws from its own stream:

- the measurement (the operator's random parameters, then the measurement noise) always comes first from image i's
  stream, ``image_generator(seed, i)``, so all K samples see the same y and the same mask or kernel;
- sample 0 continues that stream after the measurement's draws (so ``num_samples=1`` is exactly the run it was
  before ``num_samples`` existed);
- sample k ≥ 1 draws from ``sample_generator(seed, i, k)``, a stream of its own (a ``SeedSequence`` spawn key), never
  touched by the measurement.

A sample's result therefore depends on (seed, i, k) only: not on its batch, nor on K (K = 4 gives the first 4
samples of K = 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def image_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of image ``index``: all of its randomness (operator, noise, sampler) comes from it."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def sample_generator(seed: int, index: int, sample: int, device: torch.device) -> torch.Generator:
    """The generator of posterior sample ``sample`` ≥ 1 of image ``index`` (sample 0 continues the image's own
    stream after its measurement: module docstring). ``SeedSequence([seed, index], spawn_key=(sample,))``: a plain
    ``[seed, index, sample]`` entropy would give sample 0 the image's own stream ([a, b] and [a, b, 0] hash alike)."""
    if sample < 1:
        raise ValueError(f"sample={sample}: sample 0 draws from image_generator(seed, index) after the measurement")
    state = np.random.SeedSequence([seed, index], spawn_key=(sample,)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def per_image_noise(generators: Sequence[torch.Generator], like: Tensor) -> Tensor:
    """Standard normal noise shaped like ``like``, row i drawn from ``generators[i]``."""
    if len(generators) != like.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {like.shape[0]} images")
    return torch.stack(
        [torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )
