"""Measurement noise models: ``noise=gaussian|poisson|poisson_gaussian`` (``conf/noise/<name>.yaml`` ↔
``diffexp/noise/<name>.py``).

A noise model (``diffexp.noise.base.NoiseModel``) draws y from the clean measurement A(x) with each image's own
generator, gives the negative log-likelihood of y per image, and the residual whose norm a DPS-style sampler
follows. The task's operator receives it through its config (``task.operator.noise: ${noise}``) and measures with
it; the samplers declare the noise models they handle (``@sampler(noise=...)``), and ``available()`` is the list
those declarations are checked against.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra.utils import get_object

CONF_NOISE = Path(__file__).resolve().parents[2] / "conf" / "noise"


def available(folder: Path = CONF_NOISE) -> dict[str, type]:
    """The noise models of ``conf/noise/*.yaml`` (option name → class), in name order."""
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if isinstance(target, str):
            out[path.stem] = get_object(target)
    return out
