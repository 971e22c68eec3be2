"""Entry point: ``python run.py [group=option ...] [key=value ...]`` (Hydra); ``--help`` lists the commands."""

import os
import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C before a run installs its own handler (imports, config, model loading): exit 130, no traceback.
    ``os._exit``: a ``SystemExit`` raised inside an import can be caught and re-raised as another error by the
    imported library (diffusers' lazy modules do), and nothing has been written yet."""
    print("[diffexp] interrupted (SIGINT)", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from diffexp.cli import hydra_main, job  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return job(cfg)


if __name__ == "__main__":
    hydra_main(main)
