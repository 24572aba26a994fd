"""The command-line options of the experiment specs, declared once, on the spec fields.

A spec field that is also a command-line option carries an `Option` in its annotation
(`Annotated[PositiveInt, Option("-r", "--nb_of_runs", help="number of runs")]`): its
flags (the seed's names first, then aliases), a one-line help, and deprecated names
still accepted. Its type, default and bounds are the field's own. `add_spec_options`
builds the arguments of both command lines from that, so `quanta`, `quanta-train-source`
and `quanta-client` (and the dashboard's forms, generated from the same models' JSON
schema) offer the same options with the same defaults; a new field with an `Option`
appears in all of them. Pydantic keeps the `Option` out of the JSON schema.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typing_extensions import TypeAliasType


@dataclass(frozen=True)
class Option:
    """How a spec field appears on the command lines."""

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    deprecated: tuple[str, ...] = ()  # names still accepted, each shown as deprecated
    #: How the text of a field of several types is read (default: the field's type).
    parse: Callable[[str], Any] | None = None

    def __init__(self, *flags: str, help: str, metavar: str | None = None,
                 deprecated: tuple[str, ...] = (),
                 parse: Callable[[str], Any] | None = None) -> None:
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "metavar", metavar)
        object.__setattr__(self, "deprecated", deprecated)
        object.__setattr__(self, "parse", parse)


def positive_int(text: str) -> int:
    """An argparse type for the seed's "strictly positive" counts (runs, epochs, samples)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be strictly positive, got {value}")
    return value


def option_of(field: FieldInfo) -> Option | None:
    return next((m for m in field.metadata if isinstance(m, Option)), None)


def spec_options(model: type[BaseModel]) -> list[str]:
    """The fields of `model` that are command-line options, in the model's order."""
    return [name for name, field in model.model_fields.items() if option_of(field)]


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(the type without None and Annotated, the Annotated metadata found on the way)."""
    found: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            found += extra
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, found  # a union of several types: taken as text
            annotation = args[0]
        elif isinstance(annotation, TypeAliasType):
            annotation = annotation.__value__
        else:
            return annotation, found


def _argparse_type(field: FieldInfo) -> dict[str, Any]:
    option = option_of(field)
    if option is not None and option.parse is not None:
        return {"type": option.parse}
    base, found = _unwrap(field.annotation)
    bounds = [*field.metadata, *found]
    if base is bool:
        return {"action": "store_true"}
    if typing.get_origin(base) is Literal:
        return {"choices": typing.get_args(base)}
    if base is int:
        positive = any(getattr(m, "gt", None) == 0 for m in bounds)  # PositiveInt
        return {"type": positive_int if positive else int}
    if base is float:
        return {"type": float}
    return {}  # text: a task, a file, a reference


def add_spec_options(
    parser: argparse.ArgumentParser | Any, model: type[BaseModel],
    names: Iterable[str] | None = None, *, service: bool = False,
    types: Mapping[str, Callable[[str], Any]] | None = None,
) -> list[str]:
    """Add the options of `model`'s fields `names` (default: all of them) to `parser`.

    Local command lines (`service` false) get the field's default. `quanta-client`
    (`service` true) leaves an option it was not given unset (None), so the service's
    spec applies the same default; the help shows it either way. `types` replaces the
    text type of a field (a file that must exist, a job reference). Returns the names.
    """
    names = list(spec_options(model) if names is None else names)
    for name in names:
        field = model.model_fields[name]
        option = option_of(field)
        if option is None:
            raise ValueError(f"{model.__name__}.{name} is not a command-line option")
        kwargs = _argparse_type(field)
        if types and name in types:
            kwargs["type"] = types[name]
        required = field.is_required()
        default = None if required else field.default
        help_text = option.help
        if default is not None and default is not False:
            help_text += f" (default: {default})"
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if service else default
        if option.metavar:
            kwargs["metavar"] = option.metavar
        parser.add_argument(*option.flags, dest=name, help=help_text, **kwargs)
        for old in option.deprecated:
            parser.add_argument(old, dest=name, default=argparse.SUPPRESS,
                                help=f"deprecated name of {option.flags[0]}",
                                **{k: v for k, v in kwargs.items() if k != "default"})
    return names


def add_remaining_options(parser: argparse.ArgumentParser | Any, model: type[BaseModel],
                          added: Iterable[str], **kwargs: Any) -> list[str]:
    """Every option of `model` not in `added`: a field given an `Option` later reaches
    each command line that takes `model` without another edit."""
    done = set(added)
    return add_spec_options(parser, model, [n for n in spec_options(model) if n not in done],
                            **kwargs)
