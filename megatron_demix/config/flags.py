"""Command-line flags generated from a config dataclass: names, types, choices and help said once.

    group = parser.add_argument_group("training overrides (Megatron-LM names)")
    fields = add_config_flags(group, TrainingConfig, section="training", exclude={"train_iters"})
    args = parser.parse_args()
    training = replace(experiment.training, where="command line", **flag_overrides(args, fields))

As Megatron-LM's ArgumentGroupFactory does for its config dataclasses: field `micro_batch_size`
becomes `--micro-batch-size`, the field's docstring is the help, a `Literal` gives the choices, a
bool gives `--flag` / `--no-flag`, `X | None` takes an X, a list takes several values. Every flag
defaults to None (not given), so the experiment file's value stays unless the flag is used; the
dataclass's own validation then checks the result like a value read from the file.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
from functools import cache
from typing import Literal, Union, get_args, get_origin, get_type_hints


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literal under each annotated field, base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)).body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _argument(hint, help_text: str) -> dict:
    """add_argument keywords for a field of type `hint` (None-able types take the inner type)."""
    if get_origin(hint) in (Union, types.UnionType):
        (hint, *rest) = [arg for arg in get_args(hint) if arg is not type(None)]
        if rest:
            raise TypeError(f"no flag for a union of several types ({hint}, {rest})")
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        return dict(type=type(choices[0]), choices=choices, help=help_text)
    if hint is bool:
        return dict(action=argparse.BooleanOptionalAction, help=help_text)
    if get_origin(hint) is list and get_args(hint)[0] in (str, int, float):
        return dict(type=get_args(hint)[0], nargs="*", metavar=get_args(hint)[0].__name__.upper(), help=help_text)
    if hint in (str, int, float):
        return dict(type=hint, metavar=hint.__name__.upper(), help=help_text)
    raise TypeError(f"no flag for type {hint!r}: exclude the field")


def add_config_flags(parser, cls: type, *, section: str, exclude=()) -> list[str]:
    """One flag per field of the dataclass `cls` (except `exclude`) on `parser` (a parser or group); returns the fields."""
    hints, docs = get_type_hints(cls), field_docs(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        doc = docs.get(f.name, "")
        help_text = f"{doc} " if doc else ""
        help_text = (help_text + f"(default: the experiment's {section}.{f.name})").replace("%", "%%")
        parser.add_argument(flag_name(f.name), dest=f.name, default=None, **_argument(hints[f.name], help_text))
        added.append(f.name)
    return added


def flag_overrides(args: argparse.Namespace, fields: list[str]) -> dict:
    """{field: value} of the generated flags (`fields`, from add_config_flags) given on the command line."""
    return {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
