"""Ground-truth images, always returned as float tensors (N, C, H, W) in [-1, 1].

Each loader is built by ``conf/data/*.yaml`` as a partial and called with the model's
``channels`` and ``size`` and the run's ``num_images``.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from diffexp.data.ranges import from_unit
from diffexp.settings import NonNegativeInt

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OTHER_IMAGE_SUFFIXES = (".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".heic", ".jfif", ".ppm", ".pgm", ".tga")
ASSETS = Path(__file__).parents[1] / "assets"
SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I")  # PIL modes of 16-bit grayscale PNGs (I: Pillow < 11)



def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST idx file (gzip or raw) into a uint8/int array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST idx file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PIL modes I;16, I) → 8-bit L by its high byte, as PIL itself reduces 16-bit RGB
    PNGs; ``convert("L")`` would clip every value above 255 to white."""
    if img.mode not in SIXTEEN_BIT_GRAY:
        return img
    return Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))


def _load_image(path: Path, channels: int, size: int) -> Tensor:
    try:
        with Image.open(path) as img:
            img = _eight_bit(img).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255
    arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
    return from_unit(arr)


def folder(path: str, *, channels: int, size: int, num_images: int, offset: NonNegativeInt = 0) -> Tensor:
    """``data=folder``: the PNG/JPEG files of ``path`` sorted by name, converted to ``channels``
    (RGB↔gray; 16-bit PNGs by their high byte), centre-cropped and resized to ``size`` (bicubic);
    ``num_images`` of them after skipping ``offset``."""
    if offset < 0:
        raise ValueError(f"data.offset={offset} must be >= 0")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={str(root)!r} is not a folder")
    unsupported = sorted(p.name for p in root.iterdir() if p.suffix.lower() in OTHER_IMAGE_SUFFIXES)
    if unsupported:
        raise ValueError(
            f"data.path={str(root)!r} holds an unsupported image file {unsupported[0]!r}; "
            f"allowed: {', '.join(IMAGE_SUFFIXES)} (convert it or move it out)"
        )
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"data.path={str(root)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < offset + num_images:
        raise ValueError(
            f"num_images={num_images} with data.offset={offset} but data.path={str(root)!r} holds only "
            f"{len(files)} images"
        )
    return torch.stack([_load_image(f, channels, size) for f in files[offset : offset + num_images]])


def mnist_eval(*, channels: int, size: int, num_images: int, offset: NonNegativeInt = 0) -> Tensor:
    """``data=mnist_eval``: the 64 bundled MNIST test digits (see ``diffexp/assets/mnist_eval/README.md``);
    ``offset`` skips the first ones (e.g. ``data.offset=8``: digits never used to tune the defaults)."""
    return folder(str(ASSETS / "mnist_eval"), channels=channels, size=size, num_images=num_images, offset=offset)


def synthetic(*, channels: int, size: int, num_images: int, seed: int = 0) -> Tensor:
    """``data=synthetic``: deterministic procedural images (a gradient, a disc and a bar) per index."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for i in range(num_images):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        u = torch.rand(10, generator=g)
        angle = 2 * math.pi * u[0]
        img = 0.3 * (math.cos(angle) * xx + math.sin(angle) * yy)
        disc = ((xx - (0.25 + 0.5 * u[1])) ** 2 + (yy - (0.25 + 0.5 * u[2])) ** 2) < (0.1 + 0.15 * u[3]) ** 2
        bar = ((xx - (0.2 + 0.6 * u[4])).abs() < 0.05 + 0.1 * u[5]) & ((yy - 0.5).abs() < 0.35)
        layers = []
        for c in range(channels):
            tint = torch.rand(2, generator=g)
            layers.append((img + 0.6 * tint[0] * disc + 0.5 * (tint[1] - 0.5) * bar).clamp(0, 1))
        images.append(from_unit(torch.stack(layers)))
    return torch.stack(images)
