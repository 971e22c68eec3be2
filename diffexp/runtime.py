"""Where and in which precision a run computes: ``runtime.device`` and ``runtime.dtype`` (also used by training)."""

from __future__ import annotations

import torch

from diffexp.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``runtime.device``: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"runtime.device={name!r} but CUDA is not available; allowed here: auto, cpu"])
    return device
