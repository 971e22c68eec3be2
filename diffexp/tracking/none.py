"""``logger=none``: track nothing beyond the local output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class NoLogger:
    """A logger that logs nothing; the interface every logger implements."""

    log_every = 0

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.output_dir = output_dir

    def log_step(self, state: dict[str, Any], *, operator: Any, y: Any) -> None:
        """Called every ``log_every`` sampling steps with the sampler's callback state."""

    def log_results(self, result: dict[str, Any], output_dir: Path) -> None:
        """Called once with the final ``metrics.json`` content, after the images are written."""

    def sync_command(self) -> str | None:
        """The command that uploads an offline run's records (``wandb sync ...``); None when nothing to upload."""
        return None

    def finish(self, exit_code: int) -> None:
        """Called exactly once, also when the run fails (exit_code != 0)."""
