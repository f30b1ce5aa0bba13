"""The declarative field checks behind config validation (advseg.checks)."""

from __future__ import annotations

from dataclasses import dataclass

from advseg.checks import (
    between,
    coerce,
    each,
    field_problems,
    ge,
    gt,
    length,
    one_of,
    or_literal,
    param,
    prob,
    type_problem,
    window,
)


def test_range_checks_say_the_allowed_range_and_the_value() -> None:
    assert gt(0)(1e-4) is None and gt(0)(0) == "must be > 0, got 0"
    assert ge(1)(0) == "must be >= 1, got 0"
    assert prob(1.5) == "must be in [0, 1], got 1.5"
    assert between(0, 1, hi_open=True)(1.0) == "must be in [0, 1), got 1.0"
    assert window([1, 0]) == "must be [lo, hi] with lo < hi, got [1, 0]"
    assert window([0, 0]) is not None and window([0, 1]) is None
    assert length(2, 3)([1]) == "must have 2 or 3 entries, got 1 ([1])"
    assert each(ge(1))([4, 0]) == "entry 1 must be >= 1, got 0"
    assert one_of("a", "b")("c") == "must be one of 'a', 'b'; got 'c'"
    assert one_of(lambda: ["x"])("x") is None  # choices given lazily


def test_or_literal_for_auto_fields() -> None:
    check = or_literal("auto", prob)
    assert check("auto") is None and check(0.3) is None
    assert check(1.5) == "must be 'auto' or in [0, 1], got 1.5"
    assert check("always") == "must be 'auto' or a number, got 'always'"


def test_types_follow_the_hints() -> None:
    assert type_problem(True, int) == "expected an integer, got True"
    assert type_problem(3, float) is None and coerce(3, float) == 3.0 and isinstance(coerce(3, float), float)
    assert type_problem(None, int | None) is None
    assert type_problem("x", int | None) == "expected an integer or null, got 'x'"
    assert type_problem([1, "a"], list[int]) == "entry 1: expected an integer, got 'a'"
    assert type_problem([[4, 4, 4], [8, 8]], list[list[int]]) is None  # lengths are a check, not a type
    assert coerce([1, 2], list[float]) == [1.0, 2.0]
    assert type_problem(0.5, float | str) is None and type_problem("auto", float | str) is None


@dataclass
class _Inner:
    rate: float = param(0.1, gt(0))


@dataclass
class _Outer:
    n: int = param(2, ge(1))
    inner: _Inner = None  # type: ignore[assignment]
    sizes: list[int] = param([1, 2], each(ge(1)))

    def __post_init__(self) -> None:
        self.inner = self.inner or _Inner()


def test_field_problems_walk_nested_dataclasses_and_copy_list_defaults() -> None:
    a, b = _Outer(), _Outer()
    a.sizes.append(3)
    assert b.sizes == [1, 2]  # param copies mutable defaults
    bad = _Outer(n=0, inner=_Inner(rate=-1.0), sizes=[1, 0])
    assert field_problems(bad) == [
        ("n", "must be >= 1, got 0"),
        ("inner.rate", "must be > 0, got -1.0"),
        ("sizes", "entry 1 must be >= 1, got 0"),
    ]
    assert field_problems(_Outer(n="2")) == [("n", "expected an integer, got '2'")]  # type first, no range
