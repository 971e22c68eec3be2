"""The run's own settings (top level, ``runtime.*``, ``task.*``): what ``run`` reads itself, typed and checked
like every component's settings (``diffexp.settings``). The groups' own keys (``sampler.*``, ``task.operator.*``,
``data.*``, ...) are declared by the functions and classes their ``_target_`` names."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from annotated_types import Predicate
from pydantic import BaseModel

from diffexp.rundir.recorder import METRICS
from diffexp.runtime import DTYPES
from diffexp.settings import STRICT, Allowed, Ge, NonNegativeFloat, NonNegativeInt, PositiveInt

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class RuntimeSettings(BaseModel):
    """``runtime.*``: where and how the run computes (its results do not depend on them, but dtype)."""

    model_config = STRICT
    device: Annotated[str, Predicate(lambda v: DEVICE.fullmatch(v) is not None), Allowed("auto, cpu, cuda, cuda:N or mps")]
    dtype: Literal[tuple(DTYPES)]  # type: ignore[valid-type]
    deterministic: bool
    compile: bool
    channels_last: bool
    threads: Annotated[int, Ge(0), Allowed("an integer >= 0 (0: torch's default)")]


class TaskSettings(BaseModel):
    """``task.*``: the task's name, its Gaussian noise level, whether unconditional samplers may start from the
    measurement (SDEdit), and its operator (``null`` for generation); an operator's other keys may be set here and
    interpolated into it (``task.kernel`` → ``task.operator.kernel``)."""

    model_config = STRICT
    name: str
    sigma_y: NonNegativeFloat = 0.0
    sdedit: bool = False
    operator: Any = None


class RunSettings(BaseModel):
    """The top-level keys: the groups, and the run's own settings."""

    model_config = STRICT
    model: Any
    sampler: Any
    task: Any
    data: Any
    logger: Any
    metrics: Any
    runtime: Any
    seed: NonNegativeInt
    num_images: PositiveInt
    num_samples: PositiveInt = 1  # posterior samples per measurement (diffexp.evaluation.posterior)
    batch_size: PositiveInt
    resume: bool
    overwrite: bool
    optimized_metric: Literal[METRICS]  # type: ignore[valid-type]
    output_dir: str
