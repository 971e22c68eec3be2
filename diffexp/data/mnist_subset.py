"""Write the bundled evaluation digits: ``python -m diffexp.data.mnist_subset MNIST_DIR`` (test indices 0–511)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from diffexp.data.loaders import ASSETS, read_idx

COUNT = 512  # enough to resolve ~0.5 dB between samplers (the first 64 are the earlier set, unchanged)


def export(mnist_dir: str, out: Path = ASSETS / "mnist_eval") -> None:
    images = read_idx(next(Path(mnist_dir).glob("t10k-images*idx3-ubyte*")))
    labels = read_idx(next(Path(mnist_dir).glob("t10k-labels*idx1-ubyte*")))
    out.mkdir(parents=True, exist_ok=True)
    lines = ["file,test_index,label"]
    for i in range(COUNT):
        name = f"{i:05d}.png"
        Image.fromarray(images[i]).save(out / name)
        lines.append(f"{name},{i},{labels[i]}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    export(sys.argv[1])
