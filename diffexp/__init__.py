"""diffexp: Hydra-configured experiments with diffusion models on images."""

import warnings
from pathlib import Path

from omegaconf import OmegaConf

WEIGHTS = Path(__file__).parent / "weights"
OmegaConf.register_new_resolver("diffexp_weights", lambda name: str(WEIGHTS / name), replace=True)
# conf/hydra/launcher/*.yaml share the launcher plugins' names: Hydra 1.3 checks them against the plugins'
# schemas (wanted) and warns that this matching is deprecated. Set here, so launcher workers get it too.
warnings.filterwarnings("ignore", r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema", UserWarning)

from diffexp.experiment import run  # noqa: E402

__all__ = ["run"]
