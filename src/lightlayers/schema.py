"""Settings declared once: a dataclass field made with :func:`setting` carries its default, help
text and rule; the YAML reader, the CLI flags and validation all read that one declaration.

Example::

    @dataclass(frozen=True)
    class Options:
        retries: int = setting(2, "resubmissions of a failed task", check=at_least(0))

    add_flags(parser, Options)          # --retries N, help "... (default: 2)"
    build(Options, {"retries": -1}, "config")   # ConfigError: config.retries: must be >= 0, got -1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, get_args, get_origin

# A rule: returns what is wrong with a value ("must be >= 1"), or None when it is fine.
Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


# Bounded before it is built: a value may be a megabyte of text, or aliases that expand to
# millions of items, and an error message needs only its start.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 200, 200, 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def shown(value: Any, limit: int = 60, *, quote: bool = True) -> str:
    """``value`` as an error message quotes it: its repr (a str as is when ``quote`` is
    False), cut to ``limit`` characters and "..."."""
    if isinstance(value, str) and not quote:
        text = " ".join(value.split())  # one line, whatever line breaks it holds
    else:
        try:
            text = _REPR.repr(value)
        except ValueError:  # an int past Python's digit limit for str()
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Space:
    """The values ``lightlayers tune`` may try for a setting: a float or int range (``log``:
    sampled log-uniformly) or a set of ``choices``. Declared with the setting it tunes."""

    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.low:g}..{self.high:g}" + (" (log)" if self.log else "")


def log_range(low: float, high: float) -> Space:
    return Space("float", low, high, log=True)


def span(low: float, high: float) -> Space:
    return Space("float", low, high)


def int_span(low: int, high: int) -> Space:
    return Space("int", low, high)


def one_of(*choices: Any) -> Space:
    return Space("choice", choices=tuple(choices))


def setting(default: Any = MISSING, help: str = "", *, check: Check | None = None,
            factory: Callable[[], Any] | None = None, flag: bool = True,
            metavar: str | None = None, search: Space | None = None) -> Any:
    """A dataclass field declared as a setting.

    ``check`` runs on every value that is not None, wherever it comes from (YAML, a flag,
    ``--set``, a Ray worker's copy). ``flag=False``: YAML only (mappings such as ``sizes``).
    ``search``: the range ``lightlayers tune`` searches by default; a setting without one
    cannot be tuned.
    """
    meta = {"help": help, "check": check, "flag": flag, "metavar": metavar, "search": search}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- rules --------------------------------------------------------------------------------
def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           unit: str = "") -> Check:
    """``low <= v <= high``, each end open or closed; said as [a, b), (a, b] or a..b unit."""
    def rule(v: Any) -> str | None:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if ok and (not isinstance(v, float) or math.isfinite(v)):
            return None
        if unit:
            return f"must be {low:g}..{high:g} {unit}"
        return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    return rule


def not_blank(v: Any) -> str | None:
    return None if str(v).strip() else "must not be empty"


# --- types --------------------------------------------------------------------------------
def _type_ok(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        (inner, _) = get_args(tp)
        return isinstance(value, tuple) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (types.UnionType, typing.Union):
        return " | ".join(describe(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


def _coerce(value: Any, tp: Any) -> Any:
    args = get_args(tp)
    if get_origin(tp) is tuple and isinstance(value, list):
        value = tuple(value)
    wants_float = tp is float or float in args
    if wants_float and isinstance(value, int) and not isinstance(value, bool) \
            and int not in args:
        try:
            value = float(value)
        except OverflowError:  # past float's range: infinite, which check_value refuses
            value = math.inf if value > 0 else -math.inf
    if isinstance(value, str) and wants_float:
        # YAML 1.1 reads 1e-3 (no dot) as a string.
        with contextlib.suppress(ValueError):
            value = float(value)
    return value


def check_value(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` for setting ``name`` of ``cls``, coerced (lists to tuples, ints to floats), or
    a ConfigError naming ``where.name`` (``name`` when ``where`` is empty) and what was
    expected."""
    tp = typing.get_type_hints(cls)[name]
    value = _coerce(value, tp)
    label = f"{where}.{name}" if where else name
    if not _type_ok(value, tp):
        raise ConfigError(f"{label}: expected {describe(tp)}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        # NaN fails every rule's comparison; infinity would pass "> 0".
        raise ConfigError(f"{label}: must be a finite number, got {shown(value)}")
    rule = _field(cls, name).metadata.get("check")
    if value is not None and rule is not None:
        problem = rule(value)
        if problem:
            raise ConfigError(f"{label}: {problem}, got {shown(value)}")
    return value


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)`` with every value checked by its declaration; unknown keys are named
    together with the valid ones."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names, key=str)  # keys of a YAML mapping may be numbers
    if unknown:
        named = ", ".join(shown(k, 40, quote=False) for k in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ConfigError(f"{where}: unknown key(s) {named}{more}; "
                          f"valid keys: {', '.join(sorted(names))}")
    out = {k: check_value(cls, k, v, where) for k, v in values.items()}
    try:
        return cls(**out)
    except (TypeError, ValueError) as e:  # a dataclass's own range checks
        raise ConfigError(f"{where}: {e}") from None


def check_all(obj: Any, where: str) -> None:
    """Every field's rule on an already built instance (e.g. defaults merged with overrides)."""
    for f in fields(obj):
        check_value(type(obj), f.name, getattr(obj, f.name), where)


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    return next(f for f in fields(cls) if f.name == name)


# --- flags --------------------------------------------------------------------------------
def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item(s.strip()) for s in text.split(",") if s.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {shown(text)}") from None

    return parse


def _flag_kwargs(f: dataclasses.Field[Any], tp: Any) -> dict[str, Any]:
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (types.UnionType, typing.Union) and len(args) == 1:
        tp = args[0]
    kw: dict[str, Any] = {"default": None}
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        kw.update(choices=choices, type=type(choices[0]))
    elif tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif get_origin(tp) is tuple:
        item = get_args(tp)[0]
        kw.update(type=_comma_list(item), metavar=f"{item.__name__.upper()},...")
    elif tp in (int, float, str):
        kw["type"] = tp
        kw["metavar"] = {int: "N", float: "X", str: f.name.split("_")[-1].upper()}[tp]
    else:
        raise TypeError(f"setting {f.name}: no flag for type {tp!r}; declare it flag=False")
    if f.metadata.get("metavar"):
        kw["metavar"] = f.metadata["metavar"]
    return kw


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == () or value == {}:
        return ""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    return f" (default: {value})"


def add_flags(parser: argparse.ArgumentParser | Any, cls: type,
              names: Iterable[str] | None = None, *, taken: set[str] | None = None) -> list[str]:
    """One flag per flag-able setting of ``cls`` (all, or ``names``); returns the setting names
    given flags. ``taken``: names already given a flag (by another class), skipped and grown."""
    hints = typing.get_type_hints(cls)
    wanted = set(names) if names is not None else None
    added = []
    for f in fields(cls):
        if not f.metadata.get("flag", False) or (wanted is not None and f.name not in wanted):
            continue
        if taken is not None:
            if f.name in taken:
                continue
            taken.add(f.name)
        kw = _flag_kwargs(f, hints[f.name])
        parser.add_argument(flag_name(f.name), dest=f.name,
                            help=(f.metadata.get("help") or "") + _default_text(f), **kw)
        added.append(f.name)
    return added


def flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The settings given on the command line (flags left out are None and not returned)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def setting_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
