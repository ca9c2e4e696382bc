"""Config dataclasses as the one source of every default: command-line options derived from their fields.

A field declares its help text with `option(...)`; `add_options` turns each
field into an argparse option whose default, type and "(default: X)" come from
the field itself, and `values` collects them back into constructor keyword
arguments (nested config dataclasses included), so the CLI cannot drift from
the Python API. A field may also declare a `Check` (`positive_int`, `fraction`, ...):
`check_fields` applies every field's check and choices, so a config validates
itself from its declarations rather than by hand-written tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import BlockSwapError

T = TypeVar("T")

__all__ = ["option", "add_options", "values", "command_args", "field_default", "from_record", "recorded_form",
           "comma_separated", "argparse_type", "Check", "each", "check_fields", "positive_int", "non_negative_int",
           "seed_int", "positive", "non_negative", "fraction", "fraction_or_one", "json_object", "whole_numbers",
           "positive_seconds"]


class Check:
    """A rule a field's value must meet, and how an error names it: "NAME must be {must}, got VALUE"."""

    def __init__(self, accepts: Callable[[Any], bool], must: str) -> None:
        self.accepts, self.must = accepts, must

    def ok(self, value: Any) -> bool:
        """Whether `value` meets the rule."""
        return bool(self.accepts(value))

    def __call__(self, name: str, value: Any) -> None:
        """Raise BlockSwapError naming `name` unless `value` meets the rule."""
        if not self.ok(value):
            raise BlockSwapError(f"{name} must be {self.must}, got {value!r}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


positive_int = Check(lambda v: _whole(v) and v >= 1, "a positive whole number")
non_negative_int = Check(lambda v: _whole(v) and v >= 0, "a whole number >= 0")
seed_int = Check(lambda v: _whole(v) and 0 <= v < 2**63, "a whole number in [0, 2**63)")
positive = Check(lambda v: _real(v) and 0 < v < math.inf, "positive and finite")
non_negative = Check(lambda v: _real(v) and 0 <= v < math.inf, "non-negative and finite")
fraction = Check(lambda v: _real(v) and 0 < v < 1, "a fraction in (0, 1)")
below_one = Check(lambda v: _real(v) and 0 <= v < 1, "in [0, 1): 1 or more makes SGD diverge")
fraction_or_one = Check(lambda v: _real(v) and 0 < v <= 1, "a fraction in (0, 1]")
json_object = Check(lambda v: isinstance(v, dict) and _json(v), "a dict of JSON values")


def each(check: Check, must: str) -> Check:
    """A non-empty list or tuple whose every entry meets `check`; `must` says so in errors."""
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(check.ok(x) for x in v), must)


def option(
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    check: Check | None = None,
) -> dict[str, Any]:
    """Field metadata: help text, an optional parser for the option's text, choices, whether the CLI shows it, and
    the `Check` its value must meet (`check_fields` applies it and the choices)."""
    return {"help": help, "parse": parse, "choices": choices, "metavar": metavar, "cli": cli, "check": check}


def _choices(meta: Any) -> list[str] | None:
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    return None if choices is None else list(choices)


def check_fields(config: Any) -> None:
    """Apply every field's declared `Check` and choices to dataclass `config`, raising BlockSwapError that names the
    first bad field; None passes where it is the field's default (an optional setting left unset)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and field_default(f) is None:
            continue
        check = f.metadata.get("check")
        if check is not None:
            check(f.name, value)
        choices = _choices(f.metadata)
        if choices is not None and value not in choices:
            raise BlockSwapError(f"unknown {f.name} {value!r}; valid choices: {', '.join(choices)}")


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its default factory); MISSING when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` with its BlockSwapError shown by argparse as the option's error (argparse hides ValueError text)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except BlockSwapError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                skip: Iterable[str] = (), defaults: dict[str, Any] | None = None) -> None:
    """An option per CLI field of dataclass `cls` (recursing into nested config dataclasses), except `skip`.

    `defaults` replaces the fields' own defaults by name (a recipe's settings).
    """
    skipped, overrides = set(skip), defaults or {}
    for f, hint in _fields(cls):
        meta = f.metadata
        if f.name in skipped or not meta.get("cli", False):
            continue
        kind = _base_type(hint)
        if dataclasses.is_dataclass(kind):
            add_options(parser, kind, skipped, overrides)
            continue
        default = overrides.get(f.name, field_default(f))
        flag = "--" + f.name.replace("_", "-")
        text = meta["help"]
        if kind is bool:
            if default is True:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=text)
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=text)
            continue
        choices = _choices(meta)
        kwargs: dict[str, Any] = {"dest": f.name, "type": argparse_type(meta.get("parse") or kind),
                                  "metavar": meta.get("metavar")}
        if choices is not None:
            kwargs["choices"] = choices
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None:
                text = f"{text} (default: {_shown(default)})"
        parser.add_argument(flag, help=text.replace("%", "%%"), **kwargs)


def _shown(value: Any) -> str:
    """A value as its option's text, as it is typed: lists joined by commas."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def command_args(config: Any) -> list[str]:
    """The options that rebuild dataclass `config` from `add_options`: required fields and those off their default."""
    args: list[str] = []
    for f, hint in _fields(type(config)):
        if not f.metadata.get("cli", False) or dataclasses.is_dataclass(_base_type(hint)):
            continue
        value, default = getattr(config, f.name), field_default(f)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if _base_type(hint) is bool:
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            args += [flag, _shown(value)]
    return args


def values(args: argparse.Namespace, cls: type, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword arguments for `cls` from the options `add_options(parser, cls, skip)` added."""
    skipped = set(skip)
    out: dict[str, Any] = {}
    for f, hint in _fields(cls):
        if f.name in skipped or not f.metadata.get("cli", False):
            continue
        kind = _base_type(hint)
        if dataclasses.is_dataclass(kind):
            out[f.name] = kind(**values(args, kind, skipped))
        elif hasattr(args, f.name):
            out[f.name] = getattr(args, f.name)
    return out


def comma_separated(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: an option's list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def whole_numbers(text: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]: an option's positive whole numbers, comma-separated."""
    try:
        numbers = [int(v) for v in comma_separated(text)]
    except ValueError:
        raise BlockSwapError(f"expected comma-separated whole numbers, e.g. 1,8,32; got {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise BlockSwapError(f"expected positive whole numbers, got {text!r}")
    return numbers


def positive_seconds(text: str) -> float:
    """`0.1` -> 0.1: an option's positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise BlockSwapError(f"expected seconds, e.g. 0.1; got {text!r}") from None
    if not 0 < value < math.inf:
        raise BlockSwapError(f"must be a positive number of seconds, got {text!r}")
    return value


def recorded_form(cls: type, saved: Any) -> Any:
    """A saved config as `cls` would record it now (defaults of later settings filled in), so an output
    folder's record compares equal to the same settings; a record `cls` cannot read is returned as it is
    (a dict, or {} for anything else), so the comparison names what differs."""
    try:
        return dataclasses.asdict(cls.from_dict(saved))
    except (BlockSwapError, TypeError):
        return saved if isinstance(saved, dict) else {}


def from_record(cls: type[T], data: Any, what: str) -> T:
    """Dataclass `cls` from a JSON object, naming `what` it is when the object is not one, has unknown fields or
    lacks some."""
    if not isinstance(data, dict):
        raise BlockSwapError(f"a {what} must be a JSON object")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise BlockSwapError(f"unknown {what} field(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise BlockSwapError(f"incomplete {what}: {e}") from None
