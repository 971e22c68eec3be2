"""The layout's promises: no import cycle, dependencies point down, and a new sampler is one module plus its YAMLs."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_cfg
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import open_dict

import diffexp
from diffexp.errors import ConfigError

PACKAGE = ROOT / "diffexp"
# Lower layers never import higher ones (same layer: allowed, as long as there is no cycle).
LAYERS = {
    "diffexp.errors": 0, "diffexp.settings": 0, "diffexp.rundir.files": 0, "diffexp.rng": 0, "diffexp.runtime": 0, "diffexp.data": 0,
    "diffexp.models": 1, "diffexp.noise": 1, "diffexp.operators": 1, "diffexp.evaluation": 1,
    "diffexp.samplers": 2,
    "diffexp.rundir": 3, "diffexp.tracking": 3, "diffexp.solve": 3, "diffexp.run_settings": 3, "diffexp.validate": 3,
    "diffexp.experiment": 4, "diffexp.prefetch": 4,
    # entry points: the package's ``run``, the CLI glue of run.py, the Hydra callback it installs, training CLIs
    "diffexp": 5, "diffexp.cli": 5, "diffexp.samplers.__main__": 5, "diffexp.tracking.callbacks": 5, "diffexp.training": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the diffexp modules it imports, at module level or inside functions."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {t for n in names if n.startswith("diffexp") and (t := resolve(n)) not in (None, module)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def _layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return LAYERS[module]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_cycle_detection_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_dependencies_point_down() -> None:
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets if _layer(t) > _layer(m)]
    assert upward == []


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer(module)  # KeyError if a new top-level module was not placed


NEW_SAMPLER = '''
from __future__ import annotations
from typing import Annotated
import torch
from diffexp.samplers.registry import per_step, sampler
from diffexp.settings import Allowed, Finite, Gt


@sampler(measurement=True, unet_grad=False, operator=frozenset({"linear", "adjoint"}),
         noise=frozenset({"gaussian"}), network_calls=lambda timesteps, **h: 2 * len(timesteps),
         sampling_steps=per_step)
def backproject(model, x, *, timesteps, generators, y=None, operator=None, callback=None,
                gain: Annotated[float, Gt(0), Finite, Allowed("a finite number > 0")] = 1.0):
    """A toy posterior 'sampler': gain * A^T y (no network), reporting every step."""
    for i, t in enumerate(timesteps):
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x})
    return gain * operator.adjoint(y)
'''


def _conf_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, files: dict[str, str]) -> Path:
    """A copy of conf/ plus ``files`` (paths under conf/), and ``source`` importable as ``module``."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for name, text in files.items():
        (conf / name).write_text(text)
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return conf


@pytest.fixture
def added_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sampler in a temporary module plus its conf/sampler/ and conf/tuned/ files: nothing else."""
    return _conf_with(tmp_path, monkeypatch, "toy_samplers", NEW_SAMPLER, {
        "sampler/backproject.yaml": "_target_: toy_samplers.backproject\n_partial_: true\nname: backproject\n"
                                    "num_steps: 3\ngain: 1.0\n",
        "tuned/deblur_backproject.yaml": "# @package sampler\ngain: 0.5\n",
    })


def _cfg(conf: Path, overrides: list[str], out: Path):
    base = ["model=tiny", "data=synthetic", "logger=none", "metrics.lpips=false", "metrics.fid=false",
            "num_images=2", "batch_size=2", "runtime.device=cpu"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


def test_a_new_sampler_is_its_module_and_its_yamls(added_sampler: Path, tmp_path: Path) -> None:
    result = diffexp.run(_cfg(added_sampler, ["task=deblur", "sampler=backproject"], tmp_path / "deblur"))
    assert result["status"] in ("ok", "diverged") and result["num_finished"] == 2
    assert result["nfe"] == 6  # its declared network_calls, 2 per grid step
    assert result["settings_values"]["sampler.gain"] == 0.5  # its conf/tuned/deblur_backproject.yaml
    other = diffexp.run(_cfg(added_sampler, ["task=inpaint", "sampler=backproject"], tmp_path / "inpaint"))
    assert other["settings_values"]["sampler.gain"] == 1.0  # no tuned file for inpaint: its own default


def test_a_new_samplers_bad_value_is_refused_before_compute(added_sampler: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"sampler\.gain=-1 is invalid: allowed is a finite number > 0"):
        diffexp.run(_cfg(added_sampler, ["task=deblur", "sampler=backproject", "sampler.gain=-1"], out))
    assert not out.exists() or not any(out.iterdir())


def test_a_new_sampler_must_declare_every_field() -> None:
    from diffexp.samplers.registry import per_step, sampler

    with pytest.raises(TypeError, match="network_calls"):
        sampler(measurement=True, unet_grad=False, operator=frozenset(), noise=frozenset({"gaussian"}),
                sampling_steps=per_step)
    with pytest.raises(TypeError, match="operator="):
        sampler(measurement=True, unet_grad=False, operator=frozenset({"svd-ish"}), noise=frozenset({"gaussian"}),
                network_calls=per_step, sampling_steps=per_step)


def test_an_undeclared_function_is_refused_as_a_sampler(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a declared sampler"):
        diffexp.run(make_cfg(["model=tiny", "data=synthetic", "logger=none",
                              "sampler._target_=diffexp.samplers.base.clip_x0"], tmp_path))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


TASKS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "tuned").glob("*.yaml")), ids=lambda p: p.stem)
def test_tuned_defaults_apply_to_their_pair_only_and_the_command_line_wins(path: Path) -> None:
    """conf/tuned/<task>_<sampler>.yaml names a real pair, sets only keys the sampler declares, applies to that
    task alone, and a command-line value still wins."""
    from diffexp.samplers.registry import PROVIDED, available
    from diffexp.settings import settings_model

    pairs = {f"{t}_{s}": (t, s) for t in TASKS for s in available()}
    assert path.stem in pairs, f"{path.name}: no such task_sampler pair"
    task, sampler = pairs[path.stem]
    values = yaml.safe_load(path.read_text())
    declared = settings_model(get_object(_compose([f"sampler={sampler}"]).sampler._target_), PROVIDED).model_fields
    assert values and set(values) <= set(declared) | {"num_steps"}, f"{path.name} sets keys {sampler} does not declare"
    assert {k: _compose([f"task={task}", f"sampler={sampler}"]).sampler[k] for k in values} == values
    key = next(iter(values))
    assert _compose([f"task={task}", f"sampler={sampler}", f"sampler.{key}=123.0"]).sampler[key] == 123.0
    own = _compose(["task=generate", f"sampler={sampler}"]).sampler[key]  # the sampler file's default
    for other in TASKS:
        if other != task and not (path.parent / f"{other}_{sampler}.yaml").exists():
            assert _compose([f"task={other}", f"sampler={sampler}"]).sampler[key] == own, other


def test_task_files_hold_no_sampler_tuning() -> None:
    for path in (ROOT / "conf" / "task").glob("*.yaml"):
        assert "step_size" not in (yaml.safe_load(path.read_text()) or {}), path.name


NONLINEAR = '''
from __future__ import annotations
from diffexp.operators.base import Operator


class Square(Operator):
    """y = x² elementwise: a nonlinear operator offering only its forward map."""

    capabilities = frozenset()

    def forward(self, x):
        return x * x
'''


@pytest.fixture
def nonlinear_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _conf_with(tmp_path, monkeypatch, "toy_operators", NONLINEAR, {
        "task/square.yaml": "name: square\nsigma_y: 0.05\noperator:\n  _target_: toy_operators.Square\n"
                            "  _partial_: true\n  sigma_y: ${task.sigma_y}\n",
    })


def test_a_sampler_needing_what_the_operator_lacks_is_refused_naming_those_that_can(
    nonlinear_task: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        diffexp.run(_cfg(nonlinear_task, ["task=square", "sampler=ddnm"], tmp_path / "ddnm"))
    assert info.value.problems == [
        "sampler=ddnm cannot solve task=square: it needs an operator with adjoint, linear, pinv, solve_aat "
        "(Square offers only its forward map); samplers that can: dps"
    ]
    result = diffexp.run(_cfg(nonlinear_task, ["task=square", "sampler=dps", "sampler.num_steps=2"], tmp_path / "dps"))
    assert result["num_finished"] == 2  # DPS differentiates through any A


def test_the_sampler_list_for_make_comes_from_the_declarations() -> None:
    """``python -m diffexp.samplers --posterior`` (make table/tune): every posterior sampler of conf/sampler/."""
    import subprocess

    from diffexp.samplers.registry import available

    out = subprocess.run([sys.executable, "-m", "diffexp.samplers", "--posterior"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    expected = [n for n, s in available().items() if s.measurement]
    assert out.split(",") == expected and "dps" in expected and "ddpm" not in expected
