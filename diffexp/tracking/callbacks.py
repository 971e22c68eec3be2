"""Hydra callbacks (``hydra.callbacks`` in conf/config.yaml)."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig

from diffexp.cli import CleanJobError
from diffexp.rundir.files import write_json
from diffexp.tracking.report import JOB_ERROR_FILE, Report, headline, job_paths, write_report


def wandb_options(config: DictConfig) -> dict[str, Any] | None:
    """The W&B settings of the ``logger`` config when it is the W&B logger (or a subclass), else None."""
    target = config.get("logger", {}).get("_target_")
    if target is None:
        return None
    from diffexp.tracking.wandb import WandbLogger  # imports wandb, only when a logger is configured

    if not issubclass(get_class(target), WandbLogger):
        return None
    return {key: config.logger.get(key) for key in ("project", "entity", "group", "mode", "init_timeout")}


class SweepReport(Callback):
    """Writes the sweep report (``diffexp.tracking.report``) when a multirun ends; logs it to W&B with ``logger=wandb``.

    Hydra skips ``on_multirun_end`` when a job failed; the report then runs at exit. A failing job leaves
    its error in ``<job dir>/job_error.json`` for the report.
    """

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.wandb: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)  # resolved once: ${now:} must not move
        self.wandb = wandb_options(config)
        atexit.register(self._report_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._report_at_exit)
        report = self._write()
        if self.wandb is not None:
            from diffexp.tracking.wandb import log_report

            log_report(report, **self.wandb)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        # the attribute, not the ``return_value`` property: that prints "Error executing job" (Hydra does, once)
        err = job_return._return_value
        if isinstance(err, CleanJobError) and err.__cause__ is not None:
            err = err.__cause__  # the user's error itself (ConfigError, FileNotFoundError, ...)
        record = {"error": f"{type(err).__name__}: {err}", "traceback": "".join(traceback.format_exception(err))}
        path = Path(config.hydra.runtime.output_dir) / JOB_ERROR_FILE
        try:
            write_json(path, record)  # atomic: the report never reads half a file
        except OSError as write_err:  # disk full, the job's directory deleted: the sweep goes on
            print(f"[diffexp] cannot write {path}: {write_err.strerror or write_err}", file=sys.stderr)

    def _write(self) -> Report:
        """Write the report and print the top of summary.md (stdout: the jobs' log files must not get it)."""
        report = write_report(self.sweep_dir)
        print(f"[diffexp] sweep report: {', '.join(str(f) for f in report.files)}\n{headline(report)}", flush=True)
        return report

    def _report_at_exit(self) -> None:
        """The report of a sweep with a failed job. W&B has torn down its service by now: log from a new process.
        Nothing when no job started (e.g. an invalid option stopped the multirun before its first job)."""
        if self.sweep_dir is None or not job_paths(self.sweep_dir):
            return
        if self.wandb is None:
            self._write()
            return
        args = [sys.executable, "-m", "diffexp.tracking.wandb", str(self.sweep_dir)]
        for key, value in self.wandb.items():
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # this process's service is gone
        print(f"[diffexp] sweep report: {' '.join(args[1:])}", file=sys.stderr)
        subprocess.run(args, env=env, check=False)
