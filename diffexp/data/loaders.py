"""Ground-truth images, always returned as float tensors (N, C, H, W) in [-1, 1].

Each loader is built by ``conf/data/*.yaml`` as a partial and called with the model's
``channels`` and ``size`` and the run's ``num_images``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from diffexp.data.ranges import from_unit
from diffexp.errors import DataError
from diffexp.settings import NonNegativeInt

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OTHER_IMAGE_SUFFIXES = (".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".heic", ".jfif", ".ppm", ".pgm", ".tga")
ASSETS = Path(__file__).parents[1] / "assets"
SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I")  # PIL modes of 16-bit grayscale PNGs (I: Pillow < 11)
SHOWN = 5  # unreadable files named in a message (then a count)
Loader = TypeVar("Loader", bound=Callable[..., Tensor])


def checked_by(check: Callable[..., list[str]]) -> Callable[[Loader], Loader]:
    """Declare a loader's check, run before the model loads (``diffexp.validate``): ``check(num_images=...,
    **settings)`` returns every problem of the loader's settings (files that cannot be read, too few images)."""

    def declare(loader: Loader) -> Loader:
        loader.check = check  # type: ignore[attr-defined]
        return loader

    return declare


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


def _decode(path: Path) -> Image.Image:
    """The decoded image, upright (a JPEG's EXIF orientation applied, as viewers show it)."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded (empty, truncated, not an image), or None."""
    try:
        _decode(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{path.name} ({' '.join(str(err).split()) or type(err).__name__})"
    return None


def _load_image(path: Path, channels: int, size: int) -> Tensor:
    try:
        img = _eight_bit(_decode(path)).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError([f"cannot read image {path}: {err}"], title="unusable data") from err
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255
    arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
    return from_unit(arr)


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_problems(
    path: str, *, num_images: int, offset: int = 0, decode: bool = True, source: str | None = None
) -> list[str]:
    """What keeps ``folder(path, ...)`` from giving ``num_images`` images after ``offset``: a missing folder,
    unsupported image files, too few images and, with ``decode``, files among those it would read that do not
    decode (empty, truncated, not an image). Needs no model: ``diffexp.validate`` runs it before the model loads.
    ``source`` names the folder in the messages (default ``data.path='<path>'``)."""
    source = source or f"data.path={path!r}"
    root = Path(path).expanduser()
    if not root.is_dir():
        return [f"{source}: no such folder"] if not root.exists() else [
            f"{source} is a file; allowed: a folder of PNG/JPEG images"]
    problems = []
    unsupported = sorted(p.name for p in root.iterdir() if p.suffix.lower() in OTHER_IMAGE_SUFFIXES)
    if unsupported:
        problems.append(
            f"{source} holds an unsupported image file {unsupported[0]!r}; "
            f"allowed: {', '.join(IMAGE_SUFFIXES)} (convert it or move it out)"
        )
    files = _image_files(root)
    if not files:
        return problems + [f"{source} holds no image ({', '.join(IMAGE_SUFFIXES)})"]
    if len(files) < offset + num_images:
        problems.append(
            f"num_images={num_images} with data.offset={offset} but {source} holds only {len(files)} images; "
            f"allowed: num_images <= {max(len(files) - offset, 0)} with this offset"
        )
    bad = [reason for f in files[offset : offset + num_images] if decode and (reason := _unreadable(f)) is not None]
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        problems.append(f"{source}: cannot read image {', '.join(bad[:SHOWN])}{more}; replace or remove these files")
    return problems


def _folder_check(*, num_images: int, path: str, offset: int = 0, **_: Any) -> list[str]:
    return folder_problems(path, num_images=num_images, offset=offset)


@checked_by(_folder_check)
def folder(path: str, *, channels: int, size: int, num_images: int, offset: NonNegativeInt = 0) -> Tensor:
    """``data=folder``: the PNG/JPEG files of ``path`` sorted by name, upright (EXIF orientation), converted to
    ``channels`` (RGB↔gray; 16-bit PNGs by their high byte), centre-cropped and resized to ``size`` (bicubic);
    ``num_images`` of them after skipping ``offset``. Raises ``DataError`` listing what ``folder_problems``
    finds."""
    return _read_folder(path, channels, size, num_images, offset, source=None)


def _read_folder(path: str, channels: int, size: int, num_images: int, offset: int, source: str | None) -> Tensor:
    if offset < 0:
        raise DataError([f"data.offset={offset} is invalid: allowed is an integer >= 0"], title="unusable data")
    problems = folder_problems(path, num_images=num_images, offset=offset, decode=False, source=source)
    if problems:  # (files that do not decode: _load_image names them)
        raise DataError(problems, title="unusable data")
    files = _image_files(Path(path).expanduser())
    return torch.stack([_load_image(f, channels, size) for f in files[offset : offset + num_images]])


MNIST_EVAL = "data=mnist_eval (the bundled digits)"


def _mnist_eval_check(*, num_images: int, offset: int = 0, **_: Any) -> list[str]:
    return folder_problems(str(ASSETS / "mnist_eval"), num_images=num_images, offset=offset, source=MNIST_EVAL)


@checked_by(_mnist_eval_check)
def mnist_eval(*, channels: int, size: int, num_images: int, offset: NonNegativeInt = 0) -> Tensor:
    """``data=mnist_eval``: the 512 bundled MNIST test digits, test indices 0–511 (see
    ``diffexp/assets/mnist_eval/README.md``); runs use the first ``num_images`` (8 by default; 64 or more to rank
    samplers: a PSNR difference on 8 digits has a standard error of about 2 dB);
    ``offset`` skips the first ones (e.g. ``data.offset=8``: digits never used to tune the defaults)."""
    return _read_folder(str(ASSETS / "mnist_eval"), channels, size, num_images, offset, source=MNIST_EVAL)


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
