"""Per-image randomness: every draw of image i (its operator's parameters, its noise, its sampler's noise) comes
from image i's own ``torch.Generator``, so a result never depends on which other images share its batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def image_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of image ``index``: all of its randomness (operator, noise, sampler) comes from it."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def per_image_noise(generators: Sequence[torch.Generator], like: Tensor) -> Tensor:
    """Standard normal noise shaped like ``like``, row i drawn from ``generators[i]``."""
    if len(generators) != like.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {like.shape[0]} images")
    return torch.stack(
        [torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )
