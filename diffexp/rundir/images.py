"""Image files: PNGs and grids (inputs in [-1, 1], written as uint8)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid as tv_make_grid

from diffexp.data.ranges import to_uint8
from diffexp.rundir.files import atomic_write

GRID_PADDING = 2  # white pixels around every tile of a grid


def to_pil(x: Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] → PIL image (L or RGB)."""
    return Image.fromarray(to_uint8(x))


def save_png(x: Tensor | Image.Image, path: Path) -> None:
    """Write a (C, H, W) tensor in [-1, 1] (or a PIL image) as a PNG, atomically."""
    image = x if isinstance(x, Image.Image) else to_pil(x)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def make_grid(x: Tensor, nrow: int) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one PIL image, ``nrow`` images per row, each tile
    ``GRID_PADDING`` white pixels from the next and from the border."""
    grid = tv_make_grid(x.detach().float().cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    return to_pil(grid[:1] if x.shape[1] == 1 else grid)


def comparison_grid(columns: list[Tensor]) -> Image.Image:
    """One row per image, one column per tensor (e.g. ground truth | measurement | reconstruction)."""
    rows = torch.stack(columns, dim=1).flatten(0, 1)
    return make_grid(rows, nrow=len(columns))
