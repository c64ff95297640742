"""Typed config objects built from plain dicts (YAML), with errors that name the key and the fix.

Every section of an experiment file is a small frozen dataclass. `build(cls, data, where)` turns a
dict into one, checking each value against the field's type hint:

    >>> build(MergeConfig, {"method": "linear"}, where="configs/demo.yaml: merge")

Errors are `ConfigError` and read like
`configs/demo.yaml: merge.method: 'avg' is not one of 'linear', 'task_arithmetic'` (the file, a
colon, then the dotted key). Unknown keys list the allowed ones (with a close match first).
Section dataclasses validate cross-field rules in `__post_init__` by raising `ConfigError`
through `fail()` (and bounds through `require_at_least()`).

Numbers are read the way a YAML user writes them: PyYAML (YAML 1.1) reads `3e-4` (no dot) as a
string, so a string that spells a number is accepted for a number field; an int field accepts a
float with an integral value (`train_tokens: 3.0e10`). Non-finite numbers (`.nan`, `.inf`) are refused.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from megatron_demix.runtime.errors import ConfigError


def fail(where: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: {message}")


def require_at_least(config, minimum: int, *names: str) -> None:
    """`fail` naming the first field of `names` whose value (when set) is below `minimum`."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            fail(name, f"{value} must be >= {minimum}")


def child_where(where: str, key: str) -> str:
    """`exp.yaml` + `training` -> `exp.yaml: training`; `exp.yaml: training` + `lr` -> `exp.yaml: training.lr`."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any, where: str, kind: str) -> float | int:
    """`value` as a finite int or float: YAML numbers, and strings that spell one (`3e-4`)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(where, f"must be {kind} (got {value!r})")
    if not math.isfinite(value):
        fail(where, f"must be a finite number (got {value!r})")
    return value


def _allowed_keys_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}': {hint}allowed keys are {', '.join(allowed)}"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type `hint`; convert where YAML is loose (int -> float)."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            fail(where, "must be set (got null)")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of " + "; ".join(errors))
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            fail(where, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(where, f"must be a list (got {type(value).__name__} {value!r})")
        (item_hint, *_) = get_args(hint) or (Any,)
        items = [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail(where, f"must be a mapping (got {type(value).__name__})")
        key_hint, value_hint = get_args(hint) or (Any, Any)
        return {_coerce(k, key_hint, where): _coerce(v, value_hint, child_where(where, str(k))) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            fail(where, f"must be true or false (got {value!r})")
        return value
    if hint is int:
        number = _number(value, where, "an integer")
        if number != int(number):
            fail(where, f"must be an integer (got {value!r})")
        return int(number)
    if hint is float:
        return float(_number(value, where, "a number"))
    if hint is str:
        if not isinstance(value, str):
            fail(where, f"must be a string (got {value!r})")
        return value
    raise TypeError(f"{where}: unsupported config type {hint!r}")


def build(cls: type, data: Any, where: str):
    """Make the dataclass `cls` from the mapping `data`; `where` prefixes every error message."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(where, f"must be a mapping of keys to values (got {type(data).__name__} {data!r})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in fields:
            fail(where, _allowed_keys_message(key, sorted(fields)))
        kwargs[key] = _coerce(value, hints[key], child_where(where, key))
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        fail(where, f"missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as error:
        # __post_init__ messages start with the field name; put the section in front.
        message = str(error)
        raise ConfigError(message if message.startswith(where) else child_where(where, message)) from None


def to_dict(config) -> dict:
    """The plain-dict form of a config (for YAML/JSON dumps and checkpoint common state)."""
    return dataclasses.asdict(config)


def replace(config, where: str = "override", **changes):
    """A copy of `config` with `changes`, validated like a freshly loaded one."""
    merged = {**to_dict(config), **changes}
    return build(type(config), merged, where)
