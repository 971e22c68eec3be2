"""diffexp: Hydra-configured experiments with diffusion models on images."""

from pathlib import Path

from omegaconf import OmegaConf

WEIGHTS = Path(__file__).parent / "weights"
OmegaConf.register_new_resolver("diffexp_weights", lambda name: str(WEIGHTS / name), replace=True)

from diffexp.experiment import run  # noqa: E402

__all__ = ["run"]
