"""``logger=none``: track nothing beyond the local output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class NoLogger:
    """A tracker (``diffexp.tracking.base.Tracker``) that records nothing."""

    log_every: int = 0

    def __init__(self, cfg: DictConfig, output_dir: Path) -> None:
        self.output_dir = output_dir

    def log_step(self, state: dict[str, Any]) -> None:
        """Never called: ``log_every`` is 0."""

    def log_results(self, result: dict[str, Any], output_dir: Path) -> None:
        """Nothing to record: ``metrics.json`` is in ``output_dir`` already."""

    def finish(self, exit_code: int) -> None:
        """Nothing to close."""

    def console_hint(self) -> str | None:
        """No line: there is nothing to upload."""
        return None
