"""The tracker interface: what a run (``diffexp.experiment.run``) calls on its ``logger`` (conf/logger/*)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """Where a run's records go besides its output directory (``NoLogger``: nowhere, ``WandbLogger``: W&B).

    The run calls ``log_step`` every ``log_every`` sampling steps (never when 0), ``log_results`` once at the end,
    ``finish`` exactly once (also when the run fails), then prints ``console_hint()`` in its console summary.
    """

    log_every: int

    def log_step(self, state: dict[str, Any]) -> None:
        """One sampling step: the sampler's callback state (``i``, ``t``, ``x``, ``x0``), ``step`` counted over
        the whole run, and ``residual`` (per image ‖A(x̂0) − y‖; absent without a measurement)."""

    def log_results(self, result: dict[str, Any], output_dir: Path) -> None:
        """The final ``metrics.json`` content, after the images and grid.png are written to ``output_dir``."""

    def finish(self, exit_code: int) -> None:
        """Close the tracker; a non-zero ``exit_code`` marks the run failed."""

    def console_hint(self) -> str | None:
        """A line for the end-of-run console summary (e.g. how to upload an offline run), or None."""
