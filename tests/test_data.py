"""``data=folder``: bit depths, channel conversion, centre crop, resize, JPEG and file order.

Its failures (empty or missing folder, corrupt or unsupported file, too few images) are in
tests/test_validation.py (``test_unreadable_files``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, make_cfg
from PIL import Image

import diffexp
from diffexp.data.loaders import folder

LEVEL = 1 / 255  # one 8-bit grey level in [0, 1] units


def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG (grey for (H, W), RGB for (H, W, 3)) written byte by byte from the PNG specification
    (signature, IHDR, one zlib IDAT with filter 0 on every row, IEND): Pillow cannot write 16-bit RGB."""
    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if values.ndim == 2 else 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def unit(images: torch.Tensor) -> np.ndarray:
    """Loaded images (N, C, H, W) in [-1, 1] → (N, H, W, C) in [0, 1], float64."""
    return ((images.double() + 1) / 2).permute(0, 2, 3, 1).numpy()


def ramp16(h: int = 8, w: int = 8) -> np.ndarray:
    """16-bit values over the whole range, most of them above 255."""
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def one_image(tmp_path: Path, **kwargs: int) -> np.ndarray:
    """The only image of the folder ``tmp_path``, as (H, W, C) in [0, 1]."""
    return unit(folder(str(tmp_path), num_images=1, **kwargs))[0]


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_gray_png_is_scaled_by_its_bit_depth(tmp_path: Path, channels: int) -> None:
    """A 16-bit grey value v reads as v / 65535 (to one 8-bit level), not clipped at 255 → white."""
    values = ramp16()
    write_png16(tmp_path / "a.png", values)
    loaded = one_image(tmp_path, channels=channels, size=8)
    expected = values / 65535
    for c in range(channels):
        assert np.abs(loaded[..., c] - expected).max() <= LEVEL + 1e-9


def test_16bit_gray_reads_like_the_same_16bit_rgb(tmp_path: Path) -> None:
    """Grey and RGB 16-bit PNGs of the same values give the same images (both by Pillow's 16→8-bit rule)."""
    values = ramp16()
    (tmp_path / "gray").mkdir()
    (tmp_path / "rgb").mkdir()
    write_png16(tmp_path / "gray" / "a.png", values)
    write_png16(tmp_path / "rgb" / "a.png", np.stack([values] * 3, -1))
    for channels in (1, 3):
        gray = folder(str(tmp_path / "gray"), channels=channels, size=8, num_images=1)
        rgb = folder(str(tmp_path / "rgb"), channels=channels, size=8, num_images=1)
        assert torch.equal(gray, rgb)


def test_rgb_to_gray_is_the_luma_of_itu_601(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (10, 10, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    loaded = one_image(tmp_path, channels=1, size=10)[..., 0]
    luma = (rgb.astype(float) @ [0.299, 0.587, 0.114]) / 255  # ITU-R BT.601
    assert np.abs(loaded - luma).max() <= 0.5 * LEVEL + 1e-3 * LEVEL


def test_gray_to_rgb_repeats_the_channel(tmp_path: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (10, 10)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    loaded = one_image(tmp_path, channels=3, size=10)
    for c in range(3):
        np.testing.assert_allclose(loaded[..., c], gray / 255, atol=1e-6)


@pytest.mark.parametrize(("w", "h"), [(25, 16), (16, 25), (30, 16)], ids=["wide_odd", "tall_odd", "wide_even"])
def test_non_square_image_is_centre_cropped(tmp_path: Path, w: int, h: int) -> None:
    """The largest centred square (the extra pixel of an odd margin goes to the right/bottom), no resize."""
    pixels = np.random.default_rng(2).integers(0, 256, (h, w, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    expected = pixels[top : top + side, left : left + side] / 255
    np.testing.assert_allclose(one_image(tmp_path, channels=3, size=side), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("w", "h", "size"), [(40, 40, 16), (48, 32, 16), (20, 20, 28)], ids=["down", "crop_down", "up"]
)
def test_resize_is_bicubic(tmp_path: Path, w: int, h: int, size: int) -> None:
    """Against torch's antialiased bicubic resize (Keys a = −0.5, like Pillow's) of the centre crop, to one level."""
    yy, xx = np.mgrid[0:h, 0:w]
    gray = (127 + 100 * np.sin(xx / 4) * np.cos(yy / 5)).round().astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.tensor(gray[top : top + side, left : left + side], dtype=torch.float64)[None, None]
    reference = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    reference = reference[0, 0].clamp(0, 255).round().numpy() / 255
    loaded = one_image(tmp_path, channels=1, size=size)[..., 0]
    assert loaded.shape == (size, size)
    assert np.abs(loaded - reference).max() <= LEVEL + 1e-6


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_is_read(tmp_path: Path, suffix: str) -> None:
    yy, xx = np.mgrid[0:16, 0:16]
    rgb = np.stack([xx * 15, yy * 15, 255 - xx * 15], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"a{suffix}", quality=95)
    loaded = one_image(tmp_path, channels=3, size=16)
    assert np.abs(loaded - rgb / 255).mean() < 2 * LEVEL  # JPEG at quality 95 of a smooth image


def test_files_are_read_in_sorted_order_and_other_files_ignored(tmp_path: Path) -> None:
    names = ["b.png", "a.jpg", "10.png", "9.jpeg", "C.PNG"]
    for k, name in enumerate(names):
        value = 40 * (k + 1)
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder with an image suffix
    (tmp_path / "sub.png" / "z.png").write_bytes(b"")
    by_name = {name: 40 * (k + 1) / 255 for k, name in enumerate(names)}
    order = sorted(names)  # by name: '10.png' < '9.jpeg' < 'C.PNG' < 'a.jpg' < 'b.png'
    loaded = unit(folder(str(tmp_path), channels=1, size=8, num_images=5))
    np.testing.assert_allclose(loaded.mean(axis=(1, 2, 3)), [by_name[n] for n in order], atol=1.5 * LEVEL)
    first_two = unit(folder(str(tmp_path), channels=1, size=8, num_images=2))
    np.testing.assert_allclose(first_two, loaded[:2])


def test_run_on_a_folder_saves_the_converted_images_as_truth(tmp_path: Path) -> None:
    """Through run(): a non-square 8-bit RGB and a 16-bit grey PNG, read by the tiny 3-channel 16-px model."""
    data = tmp_path / "data"
    data.mkdir()
    rgb = np.random.default_rng(3).integers(0, 256, (16, 20, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(data / "0.png")
    gray = ramp16(16, 16)
    write_png16(data / "1.png", gray)
    out = tmp_path / "out"
    diffexp.run(make_cfg([*FAST, "data=folder", f"data.path={data}", "metrics.lpips=false"], out))
    truth = [np.asarray(Image.open(out / "images" / f"{i:05d}_truth.png"), dtype=float) for i in range(2)]
    np.testing.assert_array_equal(truth[0], rgb[:, 2:18])
    assert np.abs(truth[1] - np.stack([gray / 65535 * 255] * 3, -1)).max() <= 1


def test_the_bundled_evaluation_set_has_512_labelled_digits() -> None:
    """``data=mnist_eval``: MNIST test indices 0–511 as 28×28 grayscale PNGs, each with its index and label."""
    import csv

    from diffexp.data.loaders import ASSETS

    folder = ASSETS / "mnist_eval"
    with (folder / "labels.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["file"], int(r["test_index"])) for r in rows] == [(f"{i:05d}.png", i) for i in range(512)]
    assert {int(r["label"]) for r in rows} == set(range(10))
    assert sorted(p.name for p in folder.glob("*.png")) == [r["file"] for r in rows]
    for row in rows[::64]:
        with Image.open(folder / row["file"]) as img:
            assert img.mode == "L" and img.size == (28, 28)
    assert "indices 0–511" in (folder / "README.md").read_text() and "CC BY-SA 3.0" in (folder / "README.md").read_text()
