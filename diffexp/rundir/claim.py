"""The run's output directory: checked before any compute, locked for one writer, never silently clobbered.

``claim(out_dir, resume=..., overwrite=...)`` runs first in ``run``:

- the directory and the paths a run writes (``images/``, ``measurements/``, ``metrics.json``, ``grid.png``)
  must be writable and of the right kind, else ``ConfigError`` names the path;
- an exclusive lock (``.diffexp.lock``, ``fcntl.flock``) refuses a second writer while a run is in progress;
- results already there are continued with ``resume=true``, deleted first with ``overwrite=true``, and
  otherwise refused (a rerun would replace ``metrics.json`` and leave stale PNGs behind).

``overwrite=true`` deletes only what a run writes: ``metrics.json``, ``grid.png``, ``run_config.yaml``, the
temporary files of interrupted atomic writes, and in ``images/`` and ``measurements/`` the files of the image
indices the earlier ``metrics.json`` names (its rows and ``range(num_images)``; by their names,
``<index>[_truth|_measurement].png`` and ``<index>.pt``, when it is missing or damaged). Any other file there is
not diffexp's: the directory is then refused, nothing deleted, and the message lists those files (move them
away, or choose another output dir).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from diffexp.errors import ConfigError
from diffexp.rundir.files import is_temporary, read_metrics
from diffexp.rundir.runconfig import RUN_CONFIG

log = logging.getLogger(__name__)
LOCK_FILE = ".diffexp.lock"
RESULT_DIRS = ("images", "measurements")
RESULT_FILES = ("metrics.json", "grid.png", "coverage.png", RUN_CONFIG)  # coverage.png: num_samples > 1
LISTED = 5  # foreign files named in a refusal


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


def _entries(path: Path) -> list[Path]:
    return sorted(path.iterdir()) if path.is_dir() else []


def _has_results(out_dir: Path) -> bool:
    return any((out_dir / f).exists() for f in RESULT_FILES[:2]) or any(_entries(out_dir / d) for d in RESULT_DIRS)


def _some(paths: list[Path], out_dir: Path) -> str:
    names = [f"{p.relative_to(out_dir)}{'/' if p.is_dir() else ''}" for p in paths[:LISTED]]
    return ", ".join(names) + (f" (and {len(paths) - LISTED} more)" if len(paths) > LISTED else "")


def _describe(out_dir: Path) -> str:
    """What ``out_dir`` holds, in words: the earlier run's progress, or the files when there is no metrics.json."""
    path = out_dir / "metrics.json"
    if path.is_file():
        data, problem = read_metrics(path)
        if data is None:
            return f"{out_dir} holds a metrics.json that {problem}"
        rows = data.get("per_image") or []
        return (f"{out_dir} already holds results of an earlier run ({len(rows)} of {data.get('num_images', '?')} "
                f"images finished, status {data.get('status', '?')})")
    found = [f"{name}" for name in RESULT_FILES[1:2] if (out_dir / name).exists()]
    for name in RESULT_DIRS:
        entries = _entries(out_dir / name)
        if entries:
            found.append(f"{name}/ holds {len(entries)} file{'s' if len(entries) > 1 else ''} ({_some(entries, out_dir)})")
    return f"{out_dir} holds no metrics.json, but {' and '.join(found)}"


def _read_previous(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "metrics.json"
    if not path.is_file():
        return None
    previous, problem = read_metrics(path, need_rows=True)
    if previous is None:
        raise ConfigError(
            [f"{path} is damaged (it {problem}); it cannot be resumed: pass overwrite=true to start this directory "
             "afresh"],
            title="resume=true refused",
        )
    return previous


def _run_output(directory: str, previous: dict[str, Any] | None, recorded_run: bool) -> Callable[[str], bool]:
    """A test of the file names an earlier run wrote into ``directory`` (``images`` or ``measurements``): those of
    the indices ``previous`` names, any run's names when its ``metrics.json`` is there but unreadable, and none
    when there is no ``metrics.json`` at all (a run writes it before its first image: files without one are
    not a run's, even when named like ``00000.png``)."""
    # num_samples > 1 adds <i>_s<k>, <i>_mean and <i>_std PNGs, and <i>_s<k> and <i>_posterior records
    suffix = r"(_truth|_measurement|_mean|_std|_s\d+)?\.png" if directory == "images" else r"(_posterior|_s\d+)?\.pt"
    pattern = re.compile(rf"(\d{{5,}}){suffix}")
    num_images = (previous or {}).get("num_images")
    limit = int(num_images) if isinstance(num_images, (int, float)) else 0
    indices = {row["index"] for row in (previous or {}).get("per_image") or []}

    def recorded(name: str) -> bool:
        if not recorded_run:
            return False
        match = pattern.fullmatch(name)
        if match is None or f"{int(match[1]):05d}" != match[1]:  # written as image_name(index): 00001, not 000001
            return False
        return previous is None or int(match[1]) < limit or int(match[1]) in indices

    return recorded


def _clear(out_dir: Path) -> None:
    """Delete the earlier run's outputs; refuse (deleting nothing) when images/ or measurements/ hold others."""
    path = out_dir / "metrics.json"
    previous = read_metrics(path)[0] if path.is_file() else None
    ours: list[Path] = []
    foreign: list[Path] = []
    for name in RESULT_DIRS:
        recorded = _run_output(name, previous, recorded_run=path.is_file())
        for entry in _entries(out_dir / name):
            mine = entry.is_file() and (is_temporary(entry.name) or recorded(entry.name))
            (ours if mine else foreign).append(entry)
    if foreign:
        raise ConfigError(
            [f"{out_dir} holds files that no diffexp run wrote there: {_some(foreign, out_dir)}; overwrite=true "
             "deletes only a run's own outputs: move those files away, or choose another output dir "
             "(hydra.run.dir, or hydra.sweep.dir in a multirun)"],
            title="overwrite=true refused",
        )
    temporary = [e for e in _entries(out_dir) if e.is_file() and is_temporary(e.name)
                 and e.name[1:].startswith(tuple(f"{f}." for f in RESULT_FILES))]
    for entry in [*ours, *temporary, *(out_dir / f for f in (*RESULT_FILES, "metrics.json.tmp"))]:
        try:
            entry.unlink(missing_ok=True)
        except OSError as err:
            raise ConfigError([f"{entry} cannot be deleted: {err.strerror}"], title="overwrite=true failed") from None
    for name in RESULT_DIRS:
        if (out_dir / name).is_dir() and not _entries(out_dir / name):
            (out_dir / name).rmdir()


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
                        f"{_describe(out_dir)}; pass resume=true to continue it, overwrite=true to replace it, or "
                        "choose another output dir (hydra.run.dir, or hydra.sweep.dir in a multirun)"
                    ],
                    title="output directory not empty",
                )
        if resume and previous is None:
            if _has_results(out_dir):
                log.info("resume=true: %s; nothing to resume, starting fresh", _describe(out_dir))
            else:
                log.info("resume=true: %s holds no earlier results; starting fresh", out_dir)
        return Claim(out_dir, previous, lock)
    except BaseException:
        lock.close()
        raise
