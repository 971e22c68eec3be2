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


def _colormap(name: str = "viridis"):  # noqa: ANN202 - a matplotlib Colormap
    from matplotlib import colormaps  # imported here: matplotlib is slow to import and most runs have K = 1

    return colormaps[name]


def std_tile(std: Tensor, vmax: float) -> Tensor:
    """A per-pixel std (C, H, W) in [-1, 1] units as a (3, H, W) viridis tile in [-1, 1] for a grid, scaled to
    [0, ``vmax``] (the channels' mean for colour images)."""
    level = (std.float().mean(0) / max(vmax, 1e-12)).clamp(0, 1).numpy()
    rgb = torch.from_numpy(_colormap()(level)[..., :3]).permute(2, 0, 1).float()
    return rgb * 2 - 1


def save_std_heatmap(std: Tensor, path: Path) -> None:
    """Write the per-pixel posterior std (C, H, W; [-1, 1] units, shown in [0, 1] units, the channels' mean for
    colour images) as a heat map with a colour bar, atomically."""
    from matplotlib.figure import Figure

    from diffexp.rundir.files import replacing

    fig = Figure(figsize=(3.2, 2.6), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow((std.float().mean(0) / 2).numpy(), cmap=_colormap(), vmin=0)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, label="posterior std ([0, 1] units)")
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def save_coverage_plot(curve: dict[str, list], path: Path, *, num_samples: int) -> None:
    """Empirical coverage of the truth against the nominal level of the samples' central intervals, with the
    bootstrap intervals over images and the diagonal of a calibrated sampler, atomically."""
    from matplotlib.figure import Figure

    from diffexp.rundir.files import replacing

    nominal, empirical = curve["nominal"], curve["empirical"]
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    low = [e - (c or [e, e])[0] for e, c in zip(empirical, curve.get("ci") or [None] * len(nominal), strict=True)]
    high = [(c or [e, e])[1] - e for e, c in zip(empirical, curve.get("ci") or [None] * len(nominal), strict=True)]
    ax.errorbar(nominal, empirical, yerr=[low, high], marker="o", capsize=3, label=f"samples (K = {num_samples})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level of the central interval")
    ax.set_ylabel("coverage of the true pixels")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
