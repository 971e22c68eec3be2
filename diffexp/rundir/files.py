"""The run directory's file names and atomic JSON writes: what the recorder and the metrics that read a run's
images share (no other dependency, so anything may use it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def image_name(index: int, suffix: str = "") -> str:
    return f"{index:05d}{suffix}.png"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)
