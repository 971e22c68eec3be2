"""The one value-range conversion: [-1, 1] inside diffexp, [0, 1] or uint8 at the edges (metrics, PNGs)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] → [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x: Tensor) -> Tensor:
    """[0, 1] → [-1, 1]."""
    return x * 2 - 1


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] → (H, W) or (H, W, 3) uint8 array for PNG files."""
    arr = (to_unit(x.detach().float().cpu()) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr
