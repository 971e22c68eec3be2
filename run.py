"""Entry point: ``python run.py [group=option ...] [key=value ...]`` (Hydra); ``--help`` lists the commands."""

import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C before a run installs its own handler (imports, config, model loading): exit 130, no traceback."""
    print("[diffexp] interrupted (SIGINT)", file=sys.stderr)
    sys.exit(130)


signal.signal(signal.SIGINT, _interrupted)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from diffexp.cli import job  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return job(cfg)


if __name__ == "__main__":
    main()
