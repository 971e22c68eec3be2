"""The run's output directory: checked before any compute, locked for one writer, never silently clobbered.

``claim(out_dir, resume=..., overwrite=...)`` runs first in ``run``:

- the directory and the paths a run writes (``images/``, ``measurements/``, ``metrics.json``, ``grid.png``)
  must be writable and of the right kind, else ``ConfigError`` names the path;
- an exclusive lock (``.diffexp.lock``, ``fcntl.flock``) refuses a second writer while a run is in progress;
- results already there are continued with ``resume=true``, deleted first with ``overwrite=true``, and
  otherwise refused (a rerun would replace ``metrics.json`` and leave stale PNGs behind).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from diffexp.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = ".diffexp.lock"
RESULT_DIRS = ("images", "measurements")
RESULT_FILES = ("metrics.json", "grid.png")


@dataclass
class Claim:
    """A locked output directory and the ``metrics.json`` content of an earlier run (``resume=true``)."""

    out_dir: Path
    previous: dict[str, Any] | None
    _lock: IO[str]

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it would race with a waiting writer)."""
        self._lock.close()


def _check_writable(out_dir: Path) -> None:
    problems = []
    for name in RESULT_DIRS:
        path = out_dir / name
        if path.exists() and not path.is_dir():
            problems.append(f"{path} exists and is not a directory")
        elif path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{path} is not writable")
    for name in RESULT_FILES:
        path = out_dir / name
        if path.exists() and not path.is_file():
            problems.append(f"{path} exists and is not a file")
        elif path.is_file() and not os.access(path, os.W_OK) and not os.access(out_dir, os.W_OK):
            problems.append(f"{path} is not writable")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        problems.append(f"{out_dir} is not writable")
    if problems:
        raise ConfigError(
            problems, title="output directory unusable (choose another hydra.run.dir or hydra.sweep.dir)"
        )


def _lock(out_dir: Path) -> IO[str]:
    stream = (out_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.close()
        raise ConfigError(
            [f"{out_dir} is being written by another run (lock {out_dir / LOCK_FILE} is held)"],
            title="output directory in use (wait for that run, or choose another hydra.run.dir or hydra.sweep.dir)",
        ) from None
    return stream


def _has_results(out_dir: Path) -> bool:
    images = out_dir / "images"
    return any((out_dir / f).exists() for f in RESULT_FILES) or (images.is_dir() and any(images.iterdir()))


def _read_previous(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            [f"{path} is damaged ({err}); it cannot be resumed: pass overwrite=true to start this directory afresh"],
            title="resume=true refused",
        ) from None
    if not isinstance(previous, dict) or not isinstance(previous.get("per_image"), list):
        raise ConfigError(
            [f"{path} is not a diffexp metrics.json (no per_image list); pass overwrite=true to start afresh"],
            title="resume=true refused",
        )
    return previous


def _clear(out_dir: Path) -> None:
    for name in RESULT_DIRS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def claim(out_dir: Path, *, resume: bool, overwrite: bool) -> Claim:
    """Check, lock and (with ``overwrite``) clear ``out_dir``; read the earlier results with ``resume``."""
    if resume and overwrite:
        raise ConfigError(["resume=true and overwrite=true contradict each other: pick one"])
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError([f"{out_dir} cannot be created: {err.strerror}"], title="output directory unusable") from None
    _check_writable(out_dir)
    lock = _lock(out_dir)
    try:
        previous = None
        if _has_results(out_dir):
            if overwrite:
                log.info("overwrite=true: deleting the earlier results in %s", out_dir)
                _clear(out_dir)
            elif resume:
                previous = _read_previous(out_dir)
            else:
                raise ConfigError(
                    [
                        f"{out_dir} already holds results of an earlier run; pass resume=true to continue it, "
                        "overwrite=true to replace them, or choose another output dir (hydra.run.dir, or "
                        "hydra.sweep.dir in a multirun)"
                    ],
                    title="output directory not empty",
                )
        if resume and previous is None:
            log.info("resume=true: %s holds no earlier results; starting fresh", out_dir)
        return Claim(out_dir, previous, lock)
    except BaseException:
        lock.close()
        raise
