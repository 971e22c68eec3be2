"""Typed settings: a component declares its settings as annotated keyword parameters, pydantic checks them.

A sampler function, an operator class, a data loader or a tracker declares each setting where it is used::

    def dps(model, x, *, ..., step_size: Annotated[float, Gt(0), Finite, Allowed("a finite number > 0")] = 1.0)

``settings_model(target, provided)`` turns the parameters that the config sets (all but those ``run`` passes
itself) into a strict pydantic model, and ``problems(model, values, prefix)`` checks a config node's values
against it and returns every problem as ``"<key>=<value> is invalid: allowed is <what>"``, the text from the
field's ``Allowed`` marker (or one derived from its type: ``Literal`` → "one of a, b", ``bool`` → "true or
false"). Nothing is coerced: ``"3"`` is not an int, ``true`` is not a number, ``3.0`` is not an int.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AllowInfNan, BaseModel, ConfigDict, ValidationError, create_model

Finite = AllowInfNan(False)


@dataclass(frozen=True)
class Allowed:
    """What a setting allows, in words, for the error message (``Annotated[..., Allowed("an integer >= 1")]``)."""

    text: str


PositiveFloat = Annotated[float, Gt(0), Finite, Allowed("a finite number > 0")]
NonNegativeFloat = Annotated[float, Ge(0), Finite, Allowed("a finite number >= 0")]
UnitFloat = Annotated[float, Ge(0), Le(1), Allowed("a number in [0, 1]")]
PositiveInt = Annotated[int, Ge(1), Allowed("an integer >= 1")]
NonNegativeInt = Annotated[int, Ge(0), Allowed("an integer >= 0")]
STRICT = ConfigDict(strict=True, extra="ignore", arbitrary_types_allowed=True)


def _annotation(target: Callable[..., Any], name: str, raw: Any) -> Any:
    """A parameter's annotation, evaluated in its module when written as a string (``from __future__``)."""
    if not isinstance(raw, str):
        return raw
    function = target.__init__ if inspect.isclass(target) else target
    namespace = {**vars(typing), **getattr(inspect.getmodule(function), "__dict__", {})}
    try:
        return eval(raw, namespace)  # noqa: S307 - the component's own annotation text
    except (NameError, AttributeError, TypeError, SyntaxError) as err:
        raise TypeError(f"{target.__module__}.{target.__qualname__}: annotation of {name!r} ({raw}) cannot be "
                        f"evaluated: {err}") from err


@lru_cache(maxsize=None)
def settings_model(target: Callable[..., Any], provided: tuple[str, ...] = ()) -> type[BaseModel]:
    """A strict pydantic model of the keyword parameters of ``target`` (a function or a class) that are not in
    ``provided`` (those ``run`` passes itself); unannotated parameters accept anything."""
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in provided or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            continue
        annotation = Any if param.annotation is param.empty else _annotation(target, name, param.annotation)
        fields[name] = (annotation, ... if param.default is param.empty else param.default)
    return create_model(f"{getattr(target, '__qualname__', 'target')}Settings", __config__=STRICT, **fields)


def _marker(metadata: Iterable[Any]) -> Allowed | None:
    return next((m for m in metadata if isinstance(m, Allowed)), None)


def _describe(annotation: Any) -> str:
    """What a type allows, when no ``Allowed`` marker says it."""
    origin = get_origin(annotation)
    if origin is Annotated:
        marker = _marker(annotation.__metadata__)
        return marker.text if marker else _describe(get_args(annotation)[0])
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(annotation))
    if origin in (typing.Union, UnionType):
        marked = [a for a in get_args(annotation) if get_origin(a) is Annotated and _marker(a.__metadata__)]
        if marked:  # its words cover the union (e.g. "null or an integer >= 0")
            return _describe(marked[0])
        parts = [a for a in get_args(annotation) if a is not NoneType]
        text = ", ".join(_describe(a) for a in parts)
        return f"null, {text}" if len(parts) < len(get_args(annotation)) else text
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def allowed_text(model: type[BaseModel], field: str) -> str:
    """The words for what ``model``'s ``field`` allows."""
    info = model.model_fields[field]
    marker = _marker(info.metadata)
    return marker.text if marker else _describe(info.annotation)


def _repr(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def problems(
    model: type[BaseModel], values: dict[str, Any], prefix: str, key: Callable[[str], str] = lambda k: k
) -> list[str]:
    """Every invalid value of ``values`` under ``model``, as ``"<key(prefix + name)>=<value> is invalid: allowed
    is <what>"``, in field order. Unknown and missing keys are not reported here (the caller names them)."""
    try:
        model.model_validate(values)
    except ValidationError as err:
        bad = {e["loc"][0] for e in err.errors() if e["loc"] and e["type"] != "missing"}
        return [
            f"{key(prefix + name)}={_repr(values[name])} is invalid: allowed is {allowed_text(model, name)}"
            for name in model.model_fields
            if name in bad and name in values
        ]
    return []


def valid_values(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``model`` and pass them: what a check of several settings at
    once may rely on (``problems`` reports the others)."""
    try:
        model.model_validate(values)
        bad: set[Any] = set()
    except ValidationError as err:
        bad = {e["loc"][0] for e in err.errors() if e["loc"]}
    return {k: v for k, v in values.items() if k in model.model_fields and k not in bad}
