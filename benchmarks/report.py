"""Markdown from benchmark results: one section per benchmark, with the machine it ran on."""

from __future__ import annotations

from typing import Any


def machine_line(m: dict[str, Any]) -> str:
    """One line: CPU, cores, threads, device, versions, commit, date."""
    device = m["gpu"] or m["device"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "diffusers", "deepinv") if m.get(k))
    return (
        f"{m['cpu']}, {m['cpu_cores']} cores, torch threads: {m['torch_threads']}; device {device}; "
        f"Python {m['python']}, {versions}; commit {m['commit']}; {m['date']}"
    )


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    return format(value, fmt) if fmt else str(value)


def table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` = (key, header, format spec)."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if not fmt else "---:" for _, _, fmt in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def section(result: dict[str, Any], with_machine: bool) -> str:
    """A benchmark's heading, setup, (machine,) table, summary, notes and plot."""
    parts = [f"### {result['title']}", "", f"Setup: {result['setup']}."]
    if with_machine:
        parts.append(f"Machine: {machine_line(result['machine'])}.")
    parts += ["", table([tuple(c) for c in result["columns"]], result["rows"]), ""]
    for label, value in result["summary"].items():
        parts.append(f"- **{label}: {_cell(value, '.2f' if isinstance(value, (int, float)) else '')}**")
    parts += [f"- {note}" for note in result["notes"]]
    if result.get("plot"):
        parts += ["", f"![{result['title']}]({result['plot']})"]
    return "\n".join(parts).rstrip() + "\n"


def markdown(results: list[dict[str, Any]]) -> str:
    """The whole results page (``latest.md``): the machine once when every result shares it."""
    machines = {machine_line({**r["machine"], "date": ""}) for r in results}
    shared = len(machines) == 1
    head = [
        "## Benchmarks",
        "",
        "Produced by `make bench` (`python -m benchmarks.run`); method in `benchmarks/README.md`, raw numbers in "
        "`benchmarks/results/*.json`. Each comparison runs all sides in one process, interleaved; times are medians.",
    ]
    if shared:
        dates = sorted(r["machine"]["date"] for r in results)
        head += ["", f"Machine: {machine_line({**results[0]['machine'], 'date': dates[-1]})}."]
    sections = [section(r, with_machine=not shared) for r in results]
    return "\n".join(head) + "\n\n" + "\n".join(sections)
