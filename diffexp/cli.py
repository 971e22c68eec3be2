"""What ``run.py`` (and ``python -m diffexp.training.ddpm``) do inside a Hydra job: run, and turn errors the user
caused into one clean message (no traceback) with exit status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("diffexp")
USAGE_EXIT = 2  # like argparse: the command line (or a path it names) is wrong
T = TypeVar("T")


class UserError(CompactHydraException):
    """A user-caused error of a multirun job: Hydra prints its message alone (no traceback) after the sweep.
    Its ``__cause__`` is the original error (``ConfigError``, ``FileNotFoundError``, ...)."""


def user_error(err: BaseException) -> BaseException | None:
    """The error behind ``err`` that the user fixes in the config or on disk, not a bug: a ``ConfigError`` (bad
    settings, output directory, a hub model while offline), a missing path or a path of the wrong kind; also
    when Hydra's ``instantiate`` wrapped it. None for any other error."""
    from hydra.errors import InstantiationException

    from diffexp.errors import ConfigError

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err if isinstance(err, (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError)) else None


def job(cfg: DictConfig) -> float | None:
    """Run ``cfg`` (``diffexp.run``) and return the objective for sweepers; user errors as ``clean_errors``."""
    import diffexp

    return clean_errors(lambda: diffexp.run(cfg)["objective"])


def clean_errors(task: Callable[[], T]) -> T:
    """``task()``, with a user error stopping a single run with one message on stderr (also in the job's log
    file) and exit status 2; in a multirun the job fails (the other jobs still run) and Hydra prints the
    message once, without a traceback."""
    try:
        return task()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        message = f"{type(cause).__name__}: {cause}"
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise UserError(message) from cause
        _to_log_files(message)
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None


def _to_log_files(message: str) -> None:
    """Write ``message`` to the job's log file(s) only: the console gets it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
