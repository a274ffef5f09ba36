"""`@record` behaves as `@dataclass(frozen=True)`: equality, hashing, repr, frozenness, and the
dataclasses functions, checked against a frozen dataclass of the same fields. No engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoke_compimg.records import record


@record
class Point:
    x: int
    label: str = ""
    tags: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class PointDataclass:
    x: int
    label: str = ""
    tags: tuple[str, ...] = field(default=())


@record
class Point3(Point):
    z: float = 0.0


@record
class Empty:
    pass


@record
class One:
    value: Any


@record
class Secretive:
    value: str

    def __repr__(self) -> str:
        return "Secretive(...)"


values = st.tuples(st.integers(-3, 3), st.sampled_from(["", "a", "b"]),
                   st.lists(st.sampled_from(["t", "u"]), max_size=2).map(tuple))


@given(values, values)
def test_equal_and_hashed_as_a_frozen_dataclass(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    ours_a, ours_b = Point(*a), Point(*b)
    theirs_a, theirs_b = PointDataclass(*a), PointDataclass(*b)
    assert (ours_a == ours_b) == (theirs_a == theirs_b)
    assert (ours_a != ours_b) == (theirs_a != theirs_b)
    assert hash(ours_a) == hash(Point(*a))
    assert {ours_a, ours_b} == {Point(*a), Point(*b)}
    assert repr(ours_a) == repr(theirs_a).replace("PointDataclass", "Point")


def test_a_record_is_a_frozen_dataclass() -> None:
    point = Point(1, "a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del point.label  # type: ignore[misc]
    assert dataclasses.is_dataclass(point)
    assert [f.name for f in dataclasses.fields(point)] == ["x", "label", "tags"]
    assert dataclasses.replace(point, x=5) == Point(5, "a")
    assert dataclasses.asdict(point) == {"x": 1, "label": "a", "tags": ()}


def test_classes_and_field_counts() -> None:
    assert Point3(1, "a", (), 0.0) != Point(1, "a", ())  # another class: never equal, as dataclass
    assert Point(1) != (1, "", ())  # nor equal to a tuple of the same values
    assert Point3(1, z=2.5) == Point3(1, "", (), 2.5) and repr(Point3(1, z=2.5)) == \
        "Point3(x=1, label='', tags=(), z=2.5)"
    assert Empty() == Empty() and hash(Empty()) == hash(Empty()) and repr(Empty()) == "Empty()"
    assert One(1) == One(1) != One(2) and hash(One("a")) == hash(One("a")) and repr(One("a")) == "One(value='a')"
    with pytest.raises(TypeError):
        hash(One([]))  # an unhashable field makes the record unhashable, as with dataclass


def test_a_method_the_class_writes_itself_stays() -> None:
    assert repr(Secretive("hunter2")) == "Secretive(...)"
    assert Secretive("a") == Secretive("a") != Secretive("b")
