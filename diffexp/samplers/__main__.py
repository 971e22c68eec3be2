"""``python -m diffexp.samplers [--posterior | --matrix]``.

- no flag: the samplers of conf/sampler/, comma-separated (for make); ``--posterior``: the posterior ones only;
- ``--matrix``: the compatibility matrix, sampler × task (operator) × noise, as Markdown, generated from the
  declarations (``@sampler(...)``, ``Operator.capabilities``, the noise models' names) by
  ``diffexp.validate.pairing_problems``: ✓, or ✗ with the reason as a numbered note. docs/operators.md holds its
  output under "Compatibility" (a test keeps the two equal).

An entry point (like ``diffexp.cli``): it may import the orchestration modules above the samplers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from hydra.utils import get_object

from diffexp.noise import available as noise_models
from diffexp.samplers.registry import SamplerSpec, available
from diffexp.validate import pairing_problems

CONF_TASKS = Path(__file__).resolve().parents[2] / "conf" / "task"


def _reasons(message: str, sampler: str) -> list[str]:
    """The "needs ..." parts of a ``pairing_problems`` message, one per missing thing (without the list of samplers
    that can, and without the row's own noise name)."""
    text = message.split(": it ", 1)[1] if ": it " in message else message.removeprefix(f"sampler={sampler} ")
    parts = text.split(";", 1)[0].removeprefix("needs ").split(" and ")
    return ["needs " + re.sub(r" \(noise=\w+\)$", "", part) for part in parts]


def matrix(specs: dict[str, SamplerSpec] | None = None) -> str:
    """The Markdown compatibility table: one row per task and noise model (a task without an operator, generation,
    has one row: it measures nothing), one column per sampler."""
    specs = available() if specs is None else specs
    notes: dict[str, int] = {}
    rows = [f"| task (operator) | noise | {' | '.join(specs)} |", f"|---|---|{'---|' * len(specs)}"]
    for path in sorted(CONF_TASKS.glob("*.yaml")):
        task = yaml.safe_load(path.read_text()) or {}
        target = (task.get("operator") or {}).get("_target_")
        operator = get_object(target) if target else None
        label = f"{path.stem} ({operator.__name__})" if operator else f"{path.stem} (none)"
        for noise in noise_models() if operator else ["—"]:
            cells = []
            for name, spec in specs.items():
                found = pairing_problems(name, spec, path.stem, operator, sdedit=task.get("sdedit", False) is True,
                                         **({"noise": noise} if operator else {}))
                if found:
                    numbers = [notes.setdefault(r, len(notes) + 1) for r in _reasons(found[0], name)]
                    cells.append(f"✗ ({', '.join(map(str, numbers))})")
                else:
                    cells.append("✓")
            rows.append(f"| {label} | {noise} | {' | '.join(cells)} |")
    return "\n".join([*rows, "", *(f"{n}. {reason}" for reason, n in notes.items())]) + "\n"


if __name__ == "__main__":
    if "--matrix" in sys.argv[1:]:
        print(matrix(), end="")
    else:
        specs = available()
        print(",".join(n for n, s in specs.items() if s.measurement or "--posterior" not in sys.argv[1:]))
