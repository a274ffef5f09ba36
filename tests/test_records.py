"""`@record` behaves as `@dataclass(frozen=True)`: equality, hashing, repr, frozenness, and the
dataclasses functions, checked against a frozen dataclass of the same fields. No engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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


def _built(decorate: Callable[[type], Any]) -> Any:
    """The same class, made by `decorate` (ours, or dataclass's to compare with)."""
    class Built:
        name: str
        items: list[int] = field(default_factory=list)
        derived: int = field(default=0, init=False)
        later: tuple[str, ...] = field(default=(), kw_only=True)

        def __post_init__(self) -> None:
            object.__setattr__(self, "derived", len(self.name))

    return decorate(Built)


Built = _built(record)
BuiltDataclass = _built(dataclass(frozen=True))


@record(frozen=False)
class Counter:
    count: int = 0
    seen: list[str] = field(default_factory=list)


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("a",), {}), (("a", [1]), {}), ((), {"name": "b", "later": ("x",)}), (("a",), {"items": [2], "later": ()}),
    ((), {}), (("a", [1], ("x",)), {}), (("a",), {"name": "b"}), (("a",), {"derived": 3}), (("a",), {"other": 1}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_made_as_a_frozen_dataclass_is(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Same values, or a TypeError in the same cases (missing, too many, unknown, repeated)."""
    try:
        theirs = BuiltDataclass(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            Built(*args, **kwargs)
        return
    ours = Built(*args, **kwargs)
    assert repr(ours) == repr(theirs).replace("BuiltDataclass", "Built")
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)


def test_a_default_factory_makes_a_new_value_each_time() -> None:
    assert Built("a").items is not Built("a").items
    assert Counter().seen is not Counter().seen


def test_a_mutable_record() -> None:
    counter = Counter()
    counter.count += 1
    counter.seen.append("a")
    assert counter == Counter(1, ["a"]) != Counter(2)
    assert repr(counter) == "Counter(count=1, seen=['a'])"
    with pytest.raises(TypeError):
        hash(counter)  # mutable: unhashable, as a dataclass with eq
    with pytest.raises(TypeError):
        record(frozen=False)(type("Thawed", (Point,), {"__annotations__": {"w": "int"}, "w": 0}))
    with pytest.raises(TypeError):
        record(type("Frozen", (Counter,), {"__annotations__": {"w": "int"}, "w": 0}))
    assert record(frozen=False)(type("More", (Counter,), {"__annotations__": {"w": "int"}, "w": 0}))().w == 0


def test_class_definition_errors() -> None:
    with pytest.raises(TypeError):  # a field without a default after one with a default, as dataclass
        record(type("Bad", (), {"__annotations__": {"a": "int", "b": "int"}, "a": 0}))
    with pytest.raises(TypeError):
        record(type("Init", (), {"__annotations__": {"a": "dataclasses.InitVar[int]"}}))
    undocumented = record(type("Undocumented", (), {"__annotations__": {"a": "int"}}))
    assert undocumented.__doc__ == "Undocumented(a)"


def _flagged(decorate: Callable[[type], Any]) -> Any:
    class Flagged:
        key: int
        note: str = field(default="", compare=False, repr=False)
        weight: int = field(default=0, hash=False)

    return decorate(Flagged)


def _own_eq(decorate: Callable[[type], Any]) -> Any:
    class OwnEq:
        value: int

        def __eq__(self, other: object) -> bool:
            return isinstance(other, OwnEq) and abs(self.value - other.value) < 1

    return decorate(OwnEq)


def _own_hash(decorate: Callable[[type], Any]) -> Any:
    class OwnHash:
        value: int

        def __hash__(self) -> int:
            return 7

    return decorate(OwnHash)


@pytest.mark.parametrize("make", [_flagged, _own_eq, _own_hash])
def test_field_flags_and_own_methods_as_dataclass(make: Callable[..., Any]) -> None:
    for frozen in (True, False):
        ours, theirs = make(record(frozen=frozen)), make(dataclass(frozen=frozen))
        for args in ((1,), (1, "a"), (1, "b", 2), (2, "a", 2)):
            if len(args) > 1 and make is not _flagged:
                continue
            assert repr(ours(*args)).rpartition(".")[2] == repr(theirs(*args)).rpartition(".")[2]
            for other in ((1,), (1, "z"), (1, "a", 2), (2,)):
                if len(other) > 1 and make is not _flagged:
                    continue
                assert (ours(*args) == ours(*other)) == (theirs(*args) == theirs(*other))
            if theirs.__hash__ is None:
                assert ours.__hash__ is None
            else:
                assert hash(ours(*args)) == hash(theirs(*args)) or make is not _own_hash
                assert (hash(ours(*args)) == hash(ours(1))) == (hash(theirs(*args)) == hash(theirs(1)))


def test_a_mutable_records_setters_run() -> None:
    @record(frozen=False)
    class Guarded:
        size: int

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, max(0, value))

    assert Guarded(-5).size == 0
