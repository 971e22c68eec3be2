"""The run directory's file names, atomic writes and the shape of ``metrics.json``: what the recorder, the sweep
report and the metrics that read a run's images share (no other dependency, so anything may use it)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

METRICS = ("psnr", "aligned_psnr", "ssim", "lpips", "residual")  # per-image metrics of metrics.json (and baseline_<name>)
IMAGE_SUFFIXES = ("", "_truth", "_measurement")  # images/<index><suffix>.png
# num_samples=K > 1: images/<index>_s<k>.png per sample and measurements/<index>_s<k>.pt (its raw values), and per
# image images/<index>_mean.png, <index>_std.png (a heat map with a colour bar), measurements/<index>_posterior.pt
POSTERIOR_SUFFIXES = ("_mean", "_std")
POSTERIOR_RECORD = "_posterior"


def image_name(index: int, suffix: str = "") -> str:
    return f"{index:05d}{suffix}.png"


def sample_suffix(sample: int) -> str:
    """``_s<k>``: the suffix of posterior sample k's files (``num_samples`` > 1)."""
    return f"_s{sample}"


def measurement_name(index: int, suffix: str = "") -> str:
    return f"{index:05d}{suffix}.pt"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is the temporary file of an ``atomic_write`` (left behind only by a killed process)."""
    return name.startswith(".") and name.endswith(".tmp")


def open_temp(path: Path) -> tuple[IO[bytes], Path]:
    """A new temporary file next to ``path`` (same directory, so ``os.replace`` is atomic), open for writing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return os.fdopen(fd, "wb"), Path(tmp)


def atomic_write(path: Path, fill: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``fill`` writes a temporary file in the same directory, which then replaces
    ``path``; on any error (disk full, interrupt) the temporary file is removed and ``path`` is unchanged."""
    path = Path(path)
    stream, tmp = open_temp(path)
    try:
        with stream:
            fill(stream)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)``, atomically."""
    atomic_write(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    write_bytes(path, text.encode())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False))


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (``Figure.savefig``, ``csv``): it replaces ``path``
    when the block ends without error, else it is removed."""
    stream, tmp = open_temp(Path(path))
    stream.close()
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_problems(data: Any, *, need_rows: bool = False) -> list[str]:
    """What is wrong with the shape of a ``metrics.json`` content (empty when it is one diffexp can read): the
    fields diffexp reads back (per_image rows, their index and metrics, seconds, the metric blocks,
    settings_values) must have their types; other fields are not looked at."""
    if not isinstance(data, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
        return [f"it holds {kinds.get(type(data), 'null')}, not an object"]
    problems = []
    rows = data.get("per_image")
    if rows is None and need_rows or rows is not None and not isinstance(rows, list):
        problems.append("no per_image list")
        rows = []
    seen: set[int] = set()
    for n, row in enumerate(rows or []):
        if not isinstance(row, dict):
            problems.append(f"per_image[{n}] is not an object")
            continue
        index = row.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problems.append(f"per_image[{n}].index={index!r} is not an image index")
        elif index in seen:
            problems.append(f"per_image[{n}].index={index} appears twice")
        else:
            seen.add(index)
        numbers = [*METRICS, *(f"baseline_{m}" for m in METRICS), "residual_limit"]
        for key in numbers:
            if row.get(key) is not None and not _number(row[key]):
                problems.append(f"per_image[{n}].{key}={row[key]!r} is not a finite number or null")
        if "diverged" in row and not isinstance(row["diverged"], bool):
            problems.append(f"per_image[{n}].diverged={row['diverged']!r} is not true/false")
        elif row.get("diverged") and not (_number(row.get("residual")) and _number(row.get("residual_limit"))):
            problems.append(f"per_image[{n}] is diverged without a residual and residual_limit")
    problems += _sample_row_problems(data.get("per_sample"))
    for key in ("seconds", "seconds_per_image", "seconds_per_sample", "nfe", "nfe_per_sample", "num_finished",
                "num_finished_samples", "num_images", "num_samples"):
        if data.get(key) is not None and not (_number(data[key]) and data[key] >= 0):
            problems.append(f"{key}={data[key]!r} is not a finite number >= 0 or null")
    for key in ("status", "error"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key}={data[key]!r} is not a string")
    for block in ("metrics", "baseline"):
        value = data.get(block)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{block} is not an object")
            continue
        for name, stats in value.items():
            if not isinstance(stats, dict) or any(
                stats.get(s) is not None and not _number(stats[s]) for s in ("mean", "std")
            ):
                problems.append(f"{block}.{name}={stats!r} is not {{mean, std}} (numbers or null)")
    if "settings_values" in data and not isinstance(data["settings_values"], dict):
        problems.append("settings_values is not an object")
    return problems


def _sample_row_problems(rows: Any) -> list[str]:
    """What is wrong with a ``per_sample`` list (``num_samples`` > 1): rows with an image index, a sample index,
    each pair once, and numbers or null for the metrics."""
    if rows is None:
        return []
    if not isinstance(rows, list):
        return ["per_sample is not a list"]
    problems, seen = [], set()
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"per_sample[{n}] is not an object")
            continue
        pair = (row.get("index"), row.get("sample"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair):
            problems.append(f"per_sample[{n}] has no image index and sample index")
        elif pair in seen:
            problems.append(f"per_sample[{n}] (image {pair[0]}, sample {pair[1]}) appears twice")
        else:
            seen.add(pair)
        for key in (*METRICS, "residual_limit"):
            if row.get(key) is not None and not _number(row[key]):
                problems.append(f"per_sample[{n}].{key}={row[key]!r} is not a finite number or null")
    return problems


def read_metrics(path: Path, *, need_rows: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None) of a readable ``metrics.json`` of the right shape, else (None, what is wrong)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, too deep, huge integers
        return None, f"is not valid JSON ({err})" if str(err) else "is not valid JSON"
    problems = metrics_problems(data, need_rows=need_rows)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return None, "is not a diffexp metrics.json: " + "; ".join(problems[:3]) + more
    return data, None
