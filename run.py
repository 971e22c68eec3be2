"""Entry point: ``python run.py [group=option ...] [key=value ...]`` (Hydra)."""

import hydra
from omegaconf import DictConfig

import diffexp


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return diffexp.run(cfg)["objective"]


if __name__ == "__main__":
    main()
