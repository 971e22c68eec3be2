"""Peak memory of one sampling call, measured in a fresh process per side.

``python -m benchmarks.memory --side NAME --batch B --steps N [--model ...]`` loads the model, builds
the inputs, then measures the call and prints one JSON line:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before the call (tensors created by the call: activations, autograd graph, noise).
- CPU (Linux): the peak resident set size during the call minus the resident size before it. The
  kernel's peak (``VmHWM``) is reset to the current size through ``/proc/self/clear_refs`` just before
  the call. Where that file cannot be written, ``getrusage`` ``ru_maxrss`` (the process's peak so
  far) is used instead, which can read low if loading peaked higher than sampling.

A fresh process per side keeps one side's allocator caches from hiding the other's peak; the
processes may run in parallel because each measures only itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import sides
from benchmarks.common import ROOT, Settings, ground_truth, load_model, problem, setup
from diffexp.models.diffusion import DiffusionModel

SIDES = ("diffexp-ddpm", "diffusers-ddpm", "diffexp-dps", "diffexp-scoreald")
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS; False where not possible."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _side_call(s: Settings, side: str, model: DiffusionModel, batch: int, steps: int) -> Callable[[], Any]:
    """A no-argument call of ``side`` at ``batch`` with its inputs built (outside what is measured); a diffexp side
    is one ``solve_batch`` (its measurement of the ground truth included)."""
    if side == "diffusers-ddpm":
        pipe = sides.diffusers_pipeline(model)
        return lambda: sides.diffusers_ddpm(pipe, batch, s.seed, steps)
    name = side.removeprefix("diffexp-")
    task = "generate" if name == "ddpm" else s.dps_task
    solve = problem(s, model, name, task)
    indices = list(range(batch))
    truth = None if task == "generate" else ground_truth(s, model, indices)
    return lambda: sides.diffexp_solve(model, solve, s.seed, indices, steps, truth)


def measure(s: Settings, side: str, batch: int, steps: int) -> dict[str, Any]:
    """Peak memory, in bytes, that one sampling call of ``side`` at ``batch`` adds.

    An untimed one-step call at batch 1 first loads the kernels and libraries that are initialised
    lazily, so that they are not counted as sampling memory.
    """
    device = setup(s)
    model = load_model(s, device)
    _side_call(s, side, model, 1, 1)()
    call = _side_call(s, side, model, batch, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated delta"
    elif STATUS.is_file() and _reset_peak_rss():
        before = _status_kb("VmRSS")
        call()
        peak, method = (_status_kb("VmHWM") - before) * 1024, "peak RSS delta (/proc VmHWM after clear_refs)"
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        call()
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale
        method = "getrusage ru_maxrss delta"
    return {"side": side, "batch": batch, "steps": steps, "peak_bytes": int(peak), "method": method}


_CACHE: dict[tuple[Settings, str, int, int], dict[str, Any]] = {}


def peak_memory(s: Settings, jobs: list[tuple[str, int]], steps: int) -> list[dict[str, Any]]:
    """``measure`` each (side, batch) in its own fresh process, in parallel; results in the order of
    ``jobs``. A job already measured in this process with the same settings is not run again."""

    def one(job: tuple[str, int]) -> dict[str, Any]:
        side, batch = job
        cmd = [
            sys.executable, "-m", "benchmarks.memory", "--side", side, "--batch", str(batch), "--steps", str(steps),
            "--model", s.model, "--data", s.data, "--device", s.device, "--threads", str(s.threads),
            "--task", s.dps_task,
        ]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"memory worker {side} (batch {batch}) failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    todo = [job for job in dict.fromkeys(jobs) if (s, *job, steps) not in _CACHE]
    if todo:
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            for job, result in zip(todo, pool.map(one, todo)):
                _CACHE[(s, *job, steps)] = result
    return [_CACHE[(s, *job, steps)] for job in jobs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--model", default=Settings.model)
    parser.add_argument("--data", default=Settings.data)
    parser.add_argument("--device", default=Settings.device)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument("--task", default=Settings.dps_task)
    args = parser.parse_args(argv)
    s = replace(
        Settings(), model=args.model, data=args.data, device=args.device, threads=args.threads, dps_task=args.task
    )
    print(json.dumps(measure(s, args.side, args.batch, args.steps)))


if __name__ == "__main__":
    main()
