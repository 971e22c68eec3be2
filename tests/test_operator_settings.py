"""Each operator declares and checks its own settings (typed constructor parameters, ``check``) and states its
capabilities: the shipped task configs pass, one bad value per key is refused with its exact message."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import diffexp.operators
from conftest import CONF, make_cfg
from diffexp.operators.base import CAPABILITIES, PREFIX, PROVIDED, LinearOperator, Operator
from diffexp.operators.blur import Blur
from diffexp.operators.hdr import HDR
from diffexp.operators.identity import Identity
from diffexp.operators.inpaint import Inpaint
from diffexp.operators.phase_retrieval import PhaseRetrieval
from diffexp.operators.quantize import Quantize
from diffexp.operators.super_resolution import SuperResolution
from diffexp.settings import problems, settings_model

SHAPE = (3, 16, 16)
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml") if OmegaConf.load(p).get("operator") is not None)
# The task configs with the ${task.*} choices each operator offers.
VARIANTS = [
    ("deblur", []),
    ("deblur", ["task.kernel=motion"]),
    ("deblur", ["task.padding=circular"]),
    ("denoise", []),
    ("inpaint", []),
    ("inpaint", ["task.operator.random_position=true"]),
    ("inpaint", ["task.mask=random", "task.operator.fraction_max=0.9"]),
    ("inpaint", ["task.mask=half"]),
    ("super_resolution", []),
    ("super_resolution", ["task.operator.downsample=bicubic"]),
    ("hdr", []),
    ("phase_retrieval", []),
    ("phase_retrieval", ["task.convention=daps"]),
    ("quantize", []),
]
# One bad value per setting of every operator, with the message config validation and construction give.
BAD = {
    Identity: {"sigma_y": (-0.1, "a finite number >= 0")},
    Blur: {
        "sigma_y": (float("nan"), "a finite number >= 0"),
        "kernel": ("box", "one of gaussian, motion"),
        "kernel_size": (4, "an odd integer >= 1"),
        "std": (0, "a finite number > 0"),
        "intensity": (1.5, "a number in [0, 1]"),
        "padding": ("zeros", "one of reflect, circular"),
        "pinv_cutoff": (0.0, "a finite number > 0"),
    },
    Inpaint: {
        "sigma_y": (True, "a finite number >= 0"),
        "mask": ("circle", "one of box, random, half"),
        "box_size": (0, "an integer >= 1 (and <= the image size)"),
        "random_position": ("yes", "true or false"),
        "margin": (-1, "null or an integer >= 0"),
        "fraction": (1.0, "a number in (0, 1)"),
        "fraction_max": (0, "null or a number in (0, 1)"),
    },
    SuperResolution: {
        "sigma_y": ("0.1", "a finite number >= 0"),
        "factor": (2.0, "an integer >= 1 that divides the image size"),
        "downsample": ("nearest", "one of avgpool, bicubic"),
    },
    PhaseRetrieval: {
        "sigma_y": (-0.1, "a finite number >= 0"),
        "oversample": (-1.0, "a finite number >= 0"),
        "convention": ("gs", "one of dps, daps"),
    },
    HDR: {"sigma_y": (-0.1, "a finite number >= 0"), "scale": (0.0, "a finite number > 0")},
    Quantize: {"sigma_y": (-0.1, "a finite number >= 0"), "bits": (0, "an integer in 1..16")},
}


def operator_classes() -> list[type[Operator]]:
    """Every operator class defined in a module of ``diffexp.operators``."""
    found = []
    for info in pkgutil.iter_modules(diffexp.operators.__path__):
        module = importlib.import_module(f"diffexp.operators.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Operator) and c.__module__ == module.__name__]
    return found


def operator_settings(cfg: DictConfig) -> tuple[type[Operator], dict[str, Any]]:
    """The class and the resolved settings of ``task.operator``."""
    values = OmegaConf.to_container(cfg.task.operator, resolve=True)
    return get_object(values.pop("_target_")), {k: v for k, v in values.items() if k not in ("_partial_", "noise")}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[type[Operator], dict[str, Any]]:
    """Each operator class's settings in the task config that builds it."""
    out = tmp_path_factory.mktemp("out")
    return dict(operator_settings(make_cfg([f"task={task}"], out)) for task in TASKS)


@pytest.mark.parametrize(("task", "overrides"), VARIANTS)
def test_task_configs_pass_their_operator_settings(task: str, overrides: list[str], tmp_path: Path) -> None:
    cfg = make_cfg([f"task={task}", *overrides], tmp_path)
    cls, values = operator_settings(cfg)
    assert problems(settings_model(cls, PROVIDED), values, PREFIX) == []
    assert cls.check(SHAPE, values) == []
    op = instantiate(cfg.task.operator)(image_shape=SHAPE, generators=[torch.Generator().manual_seed(0)])
    assert isinstance(op, cls)


def test_variants_cover_every_task_config() -> None:
    assert sorted({task for task, _ in VARIANTS}) == TASKS


def test_bad_values_cover_every_setting_of_every_operator() -> None:
    concrete = [c for c in operator_classes() if not inspect.isabstract(c)]
    assert sorted(c.__name__ for c in concrete) == sorted(c.__name__ for c in BAD)
    for cls in concrete:
        assert set(settings_model(cls, PROVIDED).model_fields) == {*BAD[cls], "noise"}, cls.__name__  # noise: test_noise


@pytest.mark.parametrize(
    ("cls", "key"), [(cls, key) for cls, bad in BAD.items() for key in bad], ids=lambda v: getattr(v, "__name__", v)
)
def test_one_bad_value_is_refused_with_its_message(
    cls: type[Operator], key: str, shipped: dict[type[Operator], dict[str, Any]]
) -> None:
    value, allowed = BAD[cls][key]
    settings = {**shipped[cls], key: value}
    message = f"{PREFIX}{key}={value!r} is invalid: allowed is {allowed}"
    assert problems(settings_model(cls, PROVIDED), settings, PREFIX) == [message]
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(SHAPE, [torch.Generator()], **settings)


@pytest.mark.parametrize(
    ("cls", "shape", "settings", "expected"),
    [
        (Blur, (3, 16, 16), {"kernel_size": 31}, []),
        (Blur, (3, 16, 16), {"kernel_size": 33},
         ["task.operator.kernel_size=33 is invalid: allowed is an odd integer <= 31 for 16x16 images "
          "(reflect padding)"]),
        (Blur, (3, 16, 20), {"kernel_size": 33, "padding": "circular"},
         ["task.operator.kernel_size=33 is invalid: allowed is an odd integer <= 31 for 16x20 images "
          "(circular padding)"]),
        (Blur, (3, 16, 16), {"kernel_size": 34}, []),  # not odd: the settings model reports it
        (Inpaint, (3, 16, 16), {"mask": "box", "box_size": 16}, []),
        (Inpaint, (3, 16, 16), {"mask": "box", "box_size": 17},
         ["task.operator.box_size=17 is invalid: allowed is 1..16 for 16x16 images"]),
        (Inpaint, (3, 16, 16), {"mask": "random", "box_size": 17}, []),  # no box
        (Inpaint, (3, 16, 16), {"mask": "box", "box_size": 13, "random_position": True, "margin": 1}, []),
        (Inpaint, (3, 16, 16), {"mask": "box", "box_size": 14, "random_position": True, "margin": 1},
         ["task.operator.box_size=14 is invalid: allowed is 1..13 for 16x16 images with random_position and "
          "margin=1 (box_size + 2*margin < image size)"]),
        (Inpaint, (3, 16, 16), {"mask": "random", "fraction": 0.5, "fraction_max": 0.4},
         ["task.operator.fraction_max=0.4 is invalid: allowed is null or a number in [fraction=0.5, 1)"]),
        (Inpaint, (3, 16, 16), {"mask": "random", "fraction": 0.5, "fraction_max": 0.5}, []),
        (SuperResolution, (3, 16, 16), {"factor": 4}, []),
        (SuperResolution, (3, 16, 16), {"factor": 3},
         ["task.operator.factor=3 is invalid: allowed is a divisor of the image size 16"]),
        (SuperResolution, (3, 16, 24), {"factor": 16},
         ["task.operator.factor=16 is invalid: allowed is a divisor of the image size 16x24"]),
        (SuperResolution, (3, 16, 16), {"factor": 0}, []),  # not >= 1: the settings model reports it
        (SuperResolution, (3, 16, 16), {"factor": True}, []),  # not an integer: likewise
        (Identity, (3, 16, 16), {"sigma_y": 0.1}, []),
    ],
)
def test_check_needs_the_image_shape(
    cls: type[Operator], shape: tuple[int, int, int], settings: dict[str, Any], expected: list[str]
) -> None:
    assert cls.check(shape, {"sigma_y": 0.05, **settings}) == expected
    if expected:
        with pytest.raises(ValueError, match=re.escape(expected[0])):
            cls(shape, [torch.Generator()], 0.05, **settings)


@pytest.mark.parametrize("cls", operator_classes(), ids=lambda c: c.__name__)
def test_every_operator_declares_its_capabilities(cls: type[Operator]) -> None:
    assert isinstance(cls.capabilities, frozenset) and cls.capabilities <= CAPABILITIES
    if not inspect.isabstract(cls):
        assert "capabilities" in vars(cls)
    if issubclass(cls, LinearOperator):  # a conjugate-gradient fallback for every solve
        assert cls.capabilities >= LinearOperator.capabilities
    else:
        assert "linear" not in cls.capabilities


def test_linear_operators_offer_every_solve_and_the_base_none() -> None:
    assert LinearOperator.capabilities == {"linear", "adjoint", "pinv", "solve_aat", "prox", "differentiable"}
    assert Operator.capabilities == frozenset()


def test_operator_without_capabilities_is_refused() -> None:
    with pytest.raises(TypeError, match="Square must declare capabilities"):

        class Square(Operator):
            def forward(self, x: Tensor) -> Tensor:
                return x * x

    with pytest.raises(TypeError, match="Sharper must declare capabilities"):

        class Sharper(Blur):
            """Inherits Blur's forward, but not its word for what it offers."""


def test_capabilities_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(TypeError, match=r"capabilities=frozenset\(\{'eigen'\}\): allowed is a frozenset of adjoint"):

        class Odd(Operator):
            capabilities = frozenset({"eigen"})

            def forward(self, x: Tensor) -> Tensor:
                return x


def test_nonlinear_operator_offers_forward_only() -> None:
    class Square(Operator):
        capabilities = frozenset()

        def forward(self, x: Tensor) -> Tensor:
            return x * x

    class Partial(Operator):  # no forward yet: an abstract base, nothing to declare
        pass

    op = Square(SHAPE, [torch.Generator()], 0.0)
    x = torch.full((1, *SHAPE), 3.0)
    assert torch.equal(op.measure(x, [torch.Generator()]), torch.full_like(x, 9.0))
    assert inspect.isabstract(Partial) and not inspect.isabstract(Square)
    with pytest.raises(ValueError, match=re.escape("task.operator.sigma_y=-1.0 is invalid")):
        Square(SHAPE, [torch.Generator()], -1.0)
