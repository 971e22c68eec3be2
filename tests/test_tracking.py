"""The tracker interface (``diffexp.tracking.base.Tracker``) and the import structure of ``diffexp.tracking``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from diffexp.tracking.base import Tracker
from diffexp.tracking.none import NoLogger
from diffexp.tracking.wandb import WandbLogger

TRACKING = Path(__file__).resolve().parents[1] / "diffexp" / "tracking"
MEMBERS = ("log_step", "log_results", "finish", "console_hint")


def _annotations(cls: type) -> dict[str, str]:
    """The class-level annotations of ``cls`` and its bases (as written: strings under ``from __future__``)."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        out.update(vars(base).get("__annotations__", {}))
    return out


def test_the_protocol_is_what_the_run_calls() -> None:
    """Generic members only: nothing that names a service (``sync_command`` became ``console_hint``)."""
    members = {name for name, value in vars(Tracker).items() if inspect.isfunction(value) and not name.startswith("_")}
    assert members == set(MEMBERS) and _annotations(Tracker) == {"log_every": "int"}


@pytest.mark.parametrize("cls", [NoLogger, WandbLogger])
def test_each_logger_implements_the_tracker_protocol(cls: type) -> None:
    """Every member of ``Tracker`` with the same signature (names, kinds, defaults, annotations), and
    ``log_every`` declared as an int."""
    assert _annotations(cls).get("log_every") == "int"
    for name in MEMBERS:
        assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(Tracker, name)), name


def _imports(path: Path) -> set[str]:
    """The ``diffexp.tracking`` modules that ``path`` imports anywhere (module level or inside functions);
    ``from diffexp.tracking import wandb`` counts as ``diffexp.tracking.wandb``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from . import x, from .report import y
                module = ".".join(["diffexp", "tracking", *([module] if module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    modules = {f"diffexp.tracking.{p.stem}" for p in TRACKING.glob("*.py") if p.stem != "__init__"}
    return found & modules


def test_the_tracking_modules_import_each_other_without_a_cycle() -> None:
    """The report is data → files: it imports no tracker (W&B uploads it from its own side), and no two
    tracking modules import each other, directly or through others."""
    graph = {f"diffexp.tracking.{p.stem}": _imports(p) for p in TRACKING.glob("*.py") if p.stem != "__init__"}
    assert graph["diffexp.tracking.report"] == set()
    assert graph["diffexp.tracking.base"] == set()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return seen

    cycles = [module for module in graph if module in reachable(module)]
    assert not cycles, {module: sorted(graph[module]) for module in cycles}
