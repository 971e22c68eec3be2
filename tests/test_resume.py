"""resume=true: refused for each result setting on its own (naming it), accepted when only batch_size or logger
differ, continued with a larger num_images as if never interrupted, refused with a smaller one (issue #21).

(tests/test_reliability.py resumes after a SIGINT and compares with an uninterrupted run.)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import make_cfg

import diffexp
from diffexp.rundir.recorder import Recorder

BASE = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "sampler.num_steps=2",
        "num_images=2", "batch_size=2"]
VOLATILE = ("seconds", "seconds_per_image")  # wall-clock fields


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished BASE run (dps deblurring, 2 images), copied by each test that resumes it."""
    out = tmp_path_factory.mktemp("finished")
    diffexp.run(make_cfg(BASE, out))
    return out


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The image indices each run samples (and records)."""
    indices: list[int] = []
    real = Recorder.add

    def add(self: Recorder, batch: list[int], *args: Any, **kwargs: Any) -> None:
        indices.extend(batch)
        real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Recorder, "add", add)
    return indices


def copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def comparable(out: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in VOLATILE}


# one setting changed at a time: (override, its key in the message, value before, value after)
REFUSED = {
    "seed": ("seed=1", "seed", "0", "1"),
    "data": ("data.seed=1", "data.seed", "0", "1"),
    "dtype": ("runtime.dtype=bfloat16", "runtime.dtype", "float32", "bfloat16"),
    "model": ("model.seed=1", "model.seed", "0", "1"),
    "task": ("task.sigma_y=0.1", "task.sigma_y", "0.05", "0.1"),
    "task_name": ("task=inpaint", "task", "deblur", "inpaint"),
    "sampler": ("sampler.step_size=1.0", "sampler.step_size", "5.0", "1.0"),
    "sampler_name": ("sampler=scoreald", "sampler", "dps", "scoreald"),
}


@pytest.mark.parametrize(("override", "key", "before", "after"), REFUSED.values(), ids=REFUSED.keys())
def test_resume_refused_for_each_result_setting(
    finished: Path, tmp_path: Path, sampled: list[int], override: str, key: str, before: str, after: str
) -> None:
    """The message names the setting with both values (``sampler.step_size: 5.0 → 1.0``); nothing is touched."""
    out = copy(finished, tmp_path)
    before_files = files(out)
    with pytest.raises(ValueError, match="resume") as info:
        diffexp.run(make_cfg([*BASE, "resume=true", override], out))
    lines = [line for line in str(info.value).splitlines() if re.match(rf"\s*{re.escape(key)}\W", line)]
    assert lines, f"no line names {key!r} in:\n{info.value}"
    assert any(re.search(rf"\W{re.escape(before)}(\.0)?\W.*\W{re.escape(after)}(\.0)?\W?$", line) for line in lines), (
        f"{key}: {before} → {after} not in:\n{info.value}"
    )
    assert sampled == []
    assert {k: v for k, v in files(out).items() if not k.startswith(".diffexp")} == {
        k: v for k, v in before_files.items() if not k.startswith(".diffexp")
    }


ACCEPTED = {
    "batch_size": ["batch_size=1"],
    "logger": ["logger=wandb", "logger.mode=disabled"],
}


@pytest.mark.parametrize("overrides", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_resume_accepted_when_only_bookkeeping_differs(
    finished: Path, tmp_path: Path, sampled: list[int], overrides: list[str]
) -> None:
    """Nothing is sampled again; the images and their metrics stay as they were."""
    out = copy(finished, tmp_path)
    diffexp.run(make_cfg([*BASE, "resume=true", *overrides], out))
    assert sampled == []
    kept = comparable(out)["per_image"]
    assert kept == comparable(finished)["per_image"][: len(kept)] and len(kept) >= 1
    for name in ("00000.png", "00000_truth.png", "00000_measurement.png"):
        assert (out / "images" / name).read_bytes() == (finished / "images" / name).read_bytes()


def test_resume_with_more_images_samples_only_the_new_ones(finished: Path, tmp_path: Path, sampled: list[int]) -> None:
    """Continued from 2 to 3 images: only image 2 is sampled, and everything equals a fresh 3-image run."""
    out = copy(finished, tmp_path)
    diffexp.run(make_cfg([*BASE, "resume=true", "num_images=3"], out))
    assert sampled == [2]
    fresh = tmp_path / "fresh"
    diffexp.run(make_cfg([*BASE, "num_images=3"], fresh))
    assert comparable(out) == comparable(fresh)
    pngs = sorted(p.relative_to(fresh) for p in fresh.rglob("*.png"))
    assert len(pngs) == 3 * 3 + 1
    for png in pngs:
        assert (out / png).read_bytes() == (fresh / png).read_bytes(), png


def test_resume_with_fewer_images_is_refused_and_keeps_metrics_json(
    finished: Path, tmp_path: Path, sampled: list[int]
) -> None:
    """Finished images are never dropped (issue #21): num_images below the finished count is refused, naming the
    count to use, and metrics.json stays as it was (seconds_per_image = seconds / its rows)."""
    out = copy(finished, tmp_path)
    before = files(out)
    with pytest.raises(ValueError, match=r"holds 2 finished images, up to index 1, but num_images=1: resume with "
                                         r"num_images>=2"):
        diffexp.run(make_cfg([*BASE, "resume=true", "num_images=1"], out))
    assert sampled == [] and files(out) == before
    result = json.loads((out / "metrics.json").read_text())
    assert result["seconds_per_image"] == pytest.approx(result["seconds"] / len(result["per_image"]))
