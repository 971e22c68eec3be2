"""What ``run.py`` (and ``python -m diffexp.training.ddpm``) do around Hydra: errors the user caused, Hydra's own
(a mistyped key, an unknown option, an output directory that is a file) and ours, become one clean message (no
traceback) with exit status 2; a run that diverged ends with its one-line cause and exit status 1."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("diffexp")
USAGE_EXIT = 2  # like argparse: the command line (or a path it names) is wrong
T = TypeVar("T")


class CleanJobError(CompactHydraException):
    """A multirun job's error whose message says it all: reported without a traceback after the sweep. Its
    ``__cause__`` is the original error."""


class UserError(CleanJobError):
    """A user-caused error of a multirun job (``ConfigError``, ``FileNotFoundError``, ...)."""


class RunFailed(CleanJobError):
    """A multirun job that diverged (``SamplingDivergedError``): its results so far are recorded."""


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
    file) and exit status 2, and a diverged run with its cause and exit status 1 (the summary is printed
    before); in a multirun the job fails (the other jobs still run) and its message is printed once, without a
    traceback, after the sweep."""
    from diffexp.errors import SamplingDivergedError

    try:
        return task()
    except Exception as err:
        cause = user_error(err)
        kind, code = (UserError, USAGE_EXIT) if cause is not None else (RunFailed, 1)
        if cause is None and isinstance(err, SamplingDivergedError):
            cause = err
        if cause is None:
            raise
        message = f"{type(cause).__name__}: {cause}"
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise kind(message) from cause
        _to_log_files(message)
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(code) from None


def hydra_main(main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function with Hydra's own errors of the command line as user errors: one message
    (with the closest key or the options of a group) and exit status 2, not Hydra's exit status 1. A failed
    multirun job's clean error is printed once (exit 1); any other error keeps its traceback. The user's own
    ``HYDRA_FULL_ERROR=1`` still shows every traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors here instead of printing them itself
    try:
        main()
    except Exception as err:  # noqa: BLE001 - every error is reported below, bugs with their traceback
        message = command_line_error(err)
        if message is not None:
            print(f"Error: {message}", file=sys.stderr)
            raise SystemExit(USAGE_EXIT) from None
        if isinstance(err, CleanJobError):
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(1) from None  # as Hydra: a multirun with a failed job exits 1 (the others ran)
        traceback.print_exception(err)
        raise SystemExit(1) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def command_line_error(err: BaseException) -> str | None:
    """The message of an error Hydra raises for the command line before any job runs, or None: a key that does
    not exist (with the closest keys), an option a group does not have (with its options), an override that
    does not parse, an output directory that cannot be created."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        close = difflib.get_close_matches(option, err.options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={option}: no such option{hint}; allowed: {', '.join(err.options)}"
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        keys = [str(k) for k in cause.parent_node.keys()] if cause.parent_node is not None else []
        keys = [k for k in keys if not (k.startswith("_") and k.endswith("_"))]  # _target_ and the like
        parent = str(cause.full_key).rpartition(".")[0]
        close = difflib.get_close_matches(str(cause.key), keys, n=1)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        where = f"in {parent}" if parent else "at the top level"
        added = next((line for line in str(err).splitlines() if line.startswith("To append")), "")
        return (f"{cause.full_key}: no such key{hint}; allowed {where}: {', '.join(sorted(keys))}"
                + (f" ({added[0].lower()}{added[1:]})" if added else ""))
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {str(err).strip()}"
    if isinstance(err, ConfigCompositionException):
        return str(err).strip()
    if isinstance(err, (FileExistsError, NotADirectoryError, PermissionError)) and err.filename and _before_job(err):
        return (f"output directory {err.filename} cannot be created: {err.strerror.lower()} (hydra.run.dir and "
                "hydra.sweep.dir must name a folder you can write)")
    return None


def _before_job(err: BaseException) -> bool:
    """Whether ``err`` was raised by Hydra itself (creating the output directory), not inside diffexp's job (the
    first frame is ``hydra_main``'s own)."""
    package = str(Path(__file__).parent)
    tb = err.__traceback__.tb_next if err.__traceback__ is not None else None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(package):
            return False
        tb = tb.tb_next
    return True


def _to_log_files(message: str) -> None:
    """Write ``message`` to the job's log file(s) only: the console gets it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
