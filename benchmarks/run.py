"""``python -m benchmarks.run [--quick] [--only NAME ...] [--out DIR] [--<setting> VALUE ...]`` (``make bench``).

Runs the benchmarks, writes ``<out>/<name>.json`` after each one and ``<out>/latest.md`` from every
result JSON in ``<out>``, so that ``--only`` refreshes one section and keeps the others. ``--quick``
shrinks every size for a smoke run (< 2 minutes) and writes to ``benchmarks/results/quick/`` unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    Settings,
    machine_info,
    setting_fields,
    settings_dict,
    settings_from,
    setup,
    write_result,
)
from benchmarks.report import markdown
from benchmarks.suites import SUITES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (< 2 min)")
    parser.add_argument(
        "--only", action="append", choices=list(SUITES), metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(SUITES)}",
    )
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results[/quick])")
    for name, kind, default in setting_fields():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, dest=name, type=kind, nargs="+", help=f"default {' '.join(map(str, default))}")
        else:
            parser.add_argument(flag, dest=name, type=kind, help=f"default {default}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the selected benchmarks; returns the files written."""
    args = parse_args(argv)
    values = {name: getattr(args, name) for name, _, _ in setting_fields()}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    s: Settings = settings_from(values, args.quick)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(setup(s))
    written = []
    start = time.perf_counter()
    for name in args.only or list(SUITES):
        began = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        result = SUITES[name](s, out_dir)
        result.update(name=name, machine=machine, settings=settings_dict(s), seconds=time.perf_counter() - began)
        written.append(write_result(out_dir, name, result))
        print(f"[bench] {name} done in {result['seconds']:.0f} s", flush=True)
    paths = [out_dir / f"{name}.json" for name in SUITES]
    results = [json.loads(path.read_text()) for path in paths if path.is_file()]
    latest = out_dir / "latest.md"
    latest.write_text(markdown(results))
    written.append(latest)
    print(f"[bench] finished in {time.perf_counter() - start:.0f} s; results in {out_dir}", flush=True)
    return written


if __name__ == "__main__":
    main()
