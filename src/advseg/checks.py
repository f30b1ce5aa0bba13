"""Declarative checks of config fields: each field states its allowed values next to its default.

A config dataclass field is declared with :func:`param`::

    lr: float = param(5e-4, gt(0))                          # learning rate, > 0
    flip_prob: float = param(0.5, prob)                     # in [0, 1]
    hu_window: list[float] = param([-250.0, 350.0], window)  # [lo, hi] with lo < hi
    pooling: str = param("multiscale", one_of("max", "multiscale"))
    t_semi: float | str = param(0.2, or_literal("auto", prob))  # a number in [0, 1] or "auto"

A check is a function ``value -> problem text or None``; :func:`field_problems` walks a dataclass
(recursively), checks each value against its type hint and then its checks, and returns one
``(key path, problem)`` per failure, e.g. ``("train.lr", "must be > 0, got -1.0")``. Checks that
involve several fields (a patch size divisible by the network's size divisor) live with the config
that owns them (see :func:`advseg.config.validate_config`). ``None`` passes every value check: a
field that must not be None says so through its type hint.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

Check = Callable[[Any], "str | None"]


def param(default: Any, *checks: Check) -> Any:
    """A dataclass field with ``default`` (lists and dicts copied per instance) and ``checks``."""
    meta = {"checks": checks}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def gt(bound: float) -> Check:
    return lambda v: None if v > bound else f"must be > {bound:g}, got {_show(v)}"


def ge(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be >= {bound:g}, got {_show(v)}"


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """``lo <= v <= hi`` (``<`` where ``*_open``), written in interval notation in the message."""
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> str | None:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {text}, got {_show(v)}"

    return check


prob = between(0.0, 1.0)  # a probability or a fraction


def finite(v: Any) -> str | None:
    return None if math.isfinite(v) else f"must be a finite number, got {_show(v)}"


def one_of(*choices: Any) -> Check:
    """``v in choices``; a single callable argument gives the choices lazily (e.g. from a registry
    whose module imports torch)."""

    def check(v: Any) -> str | None:
        allowed = tuple(choices[0]()) if len(choices) == 1 and callable(choices[0]) else choices
        if v in allowed:
            return None
        return f"must be one of {', '.join(_show(c) for c in allowed)}; got {_show(v)}"

    return check


def length(*allowed: int) -> Check:
    def check(v: Any) -> str | None:
        if len(v) in allowed:
            return None
        n = " or ".join(str(a) for a in allowed)
        return f"must have {n} entries, got {len(v)} ({_show(v)})"

    return check


def each(*checks: Check) -> Check:
    """Every element of a list passes ``checks`` (the first failure is reported)."""

    def check(v: Any) -> str | None:
        for i, item in enumerate(v):
            for c in checks:
                problem = c(item)
                if problem:
                    return f"entry {i} {problem}"
        return None

    return check


def or_literal(literal: Any, *checks: Check) -> Check:
    """``literal`` itself (e.g. ``"auto"``) or a value that passes ``checks``; with a hint such as
    ``float | str``: ``t_semi: float | str = param(0.2, or_literal("auto", prob))``."""

    def check(v: Any) -> str | None:
        if v == literal:
            return None
        if isinstance(v, str):
            return f"must be {literal!r} or a number, got {v!r}"
        problem = _run_checks(v, checks)
        if problem and problem.startswith("must be "):
            return f"must be {literal!r} or {problem[len('must be '):]}"
        return problem

    return check


def nonempty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


def interval(strict: bool = True) -> Check:
    """Two numbers ``[lo, hi]`` with ``lo < hi`` (``lo <= hi`` when not ``strict``)."""

    def check(v: Any) -> str | None:
        ok = len(v) == 2 and (v[0] < v[1] if strict else v[0] <= v[1])
        return None if ok else f"must be [lo, hi] with lo {'<' if strict else '<='} hi, got {_show(v)}"

    return check


window = interval(strict=True)


# ------------------------------------------------------------------------------------------- types
def _name(hint: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the type hint ``hint`` (None if it does). An int fits ``float``."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [type_problem(value, h) for h in options if h is not type(None)]
        if any(p is None for p in problems):
            return None
        names = [_name(h) if typing.get_origin(h) is None else "a list" for h in options
                 if h is not type(None)]
        return f"expected {' or '.join(names)}{' or null' if type(None) in options else ''}, got {value!r}"
    if origin is list:
        if not isinstance(value, list):
            return f"expected a list, got {value!r}"
        (item_hint,) = typing.get_args(hint) or (Any,)
        for i, item in enumerate(value):
            problem = type_problem(item, item_hint)
            if problem:
                return f"entry {i}: {problem}"
        return None
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else f"expected a mapping, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    return None


def coerce(value: Any, hint: Any) -> Any:
    """``value`` (already :func:`type_problem`-free) with ints made floats where ``hint`` says float."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            if h is not type(None) and type_problem(value, h) is None:
                return coerce(value, h)
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [coerce(v, item_hint) for v in value]
    if hint is float and not isinstance(value, bool):
        return float(value)
    return value


def field_problems(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(key path, problem)`` for every field of dataclass ``obj`` (recursively) whose value has the
    wrong type or fails one of its :func:`param` checks."""
    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(field_problems(value, key + "."))
            continue
        problem = type_problem(value, hints[f.name])
        if problem is None and value is not None:
            problem = _run_checks(value, f.metadata.get("checks", ()))
        if problem:
            out.append((key, problem))
    return out


def _run_checks(value: Any, checks: Iterable[Check]) -> str | None:
    for check in checks:
        problem = check(value)
        if problem:
            return problem
    return None
