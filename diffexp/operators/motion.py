"""Random motion-blur kernels drawn as DPS draws them: the ``motionblur`` package's ``Kernel``.

DPS (Chung et al. 2023, ``util/img_utils.py: Blurkernel``) takes ``Kernel(size=(61, 61),
intensity=0.5).kernelMatrix`` from github.com/LeviBorodenko/motionblur. Its algorithm, re-implemented
here with every random number drawn from the image's ``torch.Generator``:

1. On a canvas of twice the kernel size (diagonal D), a path length L = 0.75·D·(U(0,1) + U(0, i²));
   step lengths Beta(1, 30)·(1 − i + 0.1)·D (each shorter than L) until they sum to L.
2. A maximal angle a ~ U(0, i·π) and a sign-flip probability j ~ Beta(2, 20); the first heading is
   U(−a, a), each next one Triangular(0, i·a, a + 0.1) in size, its sign flipped w.r.t. the previous
   heading with probability j.
3. The path (cumulated steps) is centred on its centre of mass, rotated by U(0, π) and moved to the
   canvas centre, drawn as a white polyline of width ⌊D/150⌋, blurred by a Gaussian of radius
   ⌊0.01·D⌋ (Pillow), resized to the kernel size (Lanczos), read as 8-bit grey and normalised to sum 1.

Differences: the line width is at least 1 px (⌊D/150⌋ is 0 below 53-px kernels, where the package
draws nothing wider than Pillow's 0-width line), and Beta variates come from uniforms (Beta(1, 30) by
inversion, Beta(2, 20) as the 2nd smallest of 21 uniforms) instead of numpy's generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

EPS = 0.1  # the package's "tiny error used for numerical stability"


def motion_kernel(size: int, intensity: float, g: torch.Generator) -> Tensor:
    """(size, size) float64 motion-blur kernel of the ``motionblur`` algorithm (module docstring), sum 1."""

    def uniform(low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * float(torch.rand((), generator=g, device=g.device, dtype=torch.float64))

    canvas = 2 * size
    diagonal = math.sqrt(2) * canvas
    path_len = 0.75 * diagonal * (uniform() + uniform(0, intensity**2))
    steps: list[float] = []
    while sum(steps) < path_len:
        step = (1 - uniform() ** (1 / 30)) * (1 - intensity + EPS) * diagonal  # Beta(1, 30) by inversion
        if step < path_len:
            steps.append(step)

    max_angle = uniform(0, intensity * math.pi)
    u21 = torch.rand(21, generator=g, device=g.device, dtype=torch.float64).cpu()
    jitter = float(u21.kthvalue(2).values)  # Beta(2, 20): the 2nd smallest of 21 uniforms
    angles = [uniform(-max_angle, max_angle)]
    while len(angles) < len(steps):
        angle = triangular(uniform(), 0.0, intensity * max_angle, max_angle + EPS)
        sign = math.copysign(1.0, angles[-1]) if angles[-1] != 0 else 0.0
        angles.append(-sign * angle if uniform() < jitter else sign * angle)

    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = (path - path.mean()) * np.exp(1j * uniform(0, math.pi)) + (canvas + 1j * canvas) / 2
    image = Image.new("L", (canvas, canvas))
    ImageDraw.Draw(image).line([(p.real, p.imag) for p in path], fill=255, width=max(1, int(diagonal / 150)))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.LANCZOS)
    kernel = torch.from_numpy(np.asarray(image, dtype=np.float64).copy())
    if kernel.sum() <= 0:
        raise ValueError(f"motion kernel of size {size} came out empty; use a larger task.kernel_size")
    return kernel / kernel.sum()


def triangular(u: float, left: float, mode: float, right: float) -> float:
    """The Triangular(left, mode, right) variate of the uniform ``u`` (inverse CDF)."""
    cut = (mode - left) / (right - left)
    if u < cut:
        return left + math.sqrt(u * (right - left) * (mode - left))
    return right - math.sqrt((1 - u) * (right - left) * (right - mode))
