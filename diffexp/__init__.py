"""diffexp: Hydra-configured experiments with diffusion models on images.

Importing the package is cheap (no torch, no diffusers): ``python run.py --help`` and tab completion stay
fast. ``diffexp.run`` imports the experiment code on first use.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

WEIGHTS = Path(__file__).parent / "weights"
OmegaConf.register_new_resolver("diffexp_weights", lambda name: str(WEIGHTS / name), replace=True)

log = logging.getLogger(__name__)
__all__ = ["run", "with_output_dir"]


def with_output_dir(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a usable ``output_dir`` outside a Hydra job (a config from the compose API, in a notebook).

    ``output_dir: ${hydra:runtime.output_dir}`` needs a running Hydra job; without one it becomes
    ``outputs/runs/<date>/<time>`` relative to the working directory, as ``python run.py`` would choose.
    Any other value (an explicit path, or a Hydra job) is kept.
    """
    from hydra.core.hydra_config import HydraConfig

    raw = OmegaConf.to_container(cfg, resolve=False).get("output_dir")
    if HydraConfig.initialized() or not (isinstance(raw, str) and raw.startswith("${hydra:")):
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.output_dir = str(Path("outputs", "runs", datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).absolute())
    log.info("no Hydra job: output_dir=%s (set cfg.output_dir to choose)", cfg.output_dir)
    return cfg


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment (``diffexp.experiment.run``); works from ``python run.py`` and from a config
    composed with ``hydra.compose`` (see ``with_output_dir``)."""
    from diffexp.experiment import run as run_experiment

    return run_experiment(with_output_dir(cfg))
