"""`@record`: `@dataclass(frozen=True)`, quicker to make.

A dataclass gets its methods as generated source text, which Python compiles when the class
is made: 0.35 ms a class here even with only `__init__` and the two methods that keep an
instance frozen, and a build makes about 60 classes before its solve request leaves, at every
start (21 ms of a 0.17 s start-up). `@record` has `dataclass` work out the fields (defaults,
`field(...)`, `kw_only`, inheritance) and generate nothing, then gives every record the same
methods, written once below: `__init__` (the fields in order, then `__post_init__`),
`__setattr__`/`__delattr__` (refused with `FrozenInstanceError`), `__eq__`, `__hash__`,
`__repr__`, with dataclass's meaning: equal when of the same class with equal fields, hashed
by its fields, shown as `Name(field=value, ...)` (`field(compare=, hash=, repr=)` as dataclass
reads them). `@record(frozen=False)` makes a mutable one (unhashable, as `@dataclass`). A
record is a dataclass in every other way (`dataclasses.replace`, `fields`, `asdict`,
`is_dataclass`); `InitVar` is not supported. A method the class writes itself stays.
Construction costs about a microsecond more than a generated `__init__`: a whole build makes
a few hundred records.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorator: decorator

T = TypeVar("T")

_MISSING = dataclasses.MISSING
Values = Callable[[Any], tuple[Any, ...]]
_compared: dict[type, Values] = {}  # a class's compared field values, as a tuple
_hashed: dict[type, Values] = {}  # and its hashed ones (`hash=None` follows `compare`, as with dataclass)


def _values_of(cls: type, cache: dict[type, Values], counts: Callable[[dataclasses.Field[Any]], bool]) -> Values:
    try:
        return cache[cls]
    except KeyError:
        names = [f.name for f in dataclasses.fields(cls) if counts(f)]  # type: ignore[arg-type]
        getter = operator.attrgetter(*names) if names else None
        values: Values
        if getter is None:
            values = lambda _: ()  # noqa: E731
        elif len(names) == 1:
            values = lambda obj: (getter(obj),)  # noqa: E731
        else:
            values = getter  # type: ignore[assignment]
        cache[cls] = values
        return values


def _eq(self: Any, other: object) -> Any:  # (bool, or NotImplemented: Python asks `other`)
    if other.__class__ is not self.__class__:
        return NotImplemented
    values = _values_of(self.__class__, _compared, lambda f: f.compare)
    return self is other or values(self) == values(other)


def _hash(self: Any) -> int:
    return hash(_values_of(self.__class__, _hashed, lambda f: f.compare if f.hash is None else f.hash)(self))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
    return f"{self.__class__.__qualname__}({shown})"


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _initializer(cls: Any, frozen: bool) -> Callable[..., None]:
    """`cls.__init__`, as dataclass would generate it, made from a closure instead of source."""
    fields = dataclasses.fields(cls)
    if any("InitVar" in str(f.type) for f in cls.__dataclass_fields__.values() if f not in fields):
        raise TypeError(f"{cls.__qualname__}: @record does not support InitVar")
    positional = [f.name for f in fields if f.init and not f.kw_only]
    keyword_only = [f.name for f in fields if f.init and f.kw_only]
    defaults = {f.name: f.default for f in fields if f.default is not _MISSING}
    factories = {f.name: f.default_factory for f in fields if f.default_factory is not _MISSING}
    for before, after in itertools.pairwise(positional):
        if (before in defaults or before in factories) and not (after in defaults or after in factories):
            raise TypeError(f"{cls.__qualname__}: field {after!r} without a default follows one with a default")
    order = [(f.name, f.init) for f in fields]
    accepted = frozenset(positional) | frozenset(keyword_only)
    post_init = hasattr(cls, "__post_init__")
    qualname = cls.__qualname__
    put = object.__setattr__ if frozen else setattr  # (a mutable one's own setters and properties run)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(positional):
            raise TypeError(f"{qualname}.__init__() takes {len(positional) + 1} positional arguments "
                            f"but {len(args) + 1} were given")
        given = dict(zip(positional, args, strict=False))
        for name, value in kwargs.items():
            if name not in accepted:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
            if name in given:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
            given[name] = value
        missing = []
        for name, init in order:
            if init and name in given:
                put(self, name, given[name])
            elif name in defaults:
                put(self, name, defaults[name])
            elif name in factories:
                put(self, name, factories[name]())
            elif init:
                missing.append(name)
        if missing:
            raise TypeError(f"{qualname}.__init__() missing {len(missing)} required argument"
                            f"{'s' if len(missing) > 1 else ''}: {', '.join(map(repr, missing))}")
        if post_init:
            self.__post_init__()

    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T] | None = None, /, *, frozen: bool = True) -> Any:
    """The class as a dataclass, frozen unless `frozen=False` (see the module's docstring)."""
    if cls is None:
        return lambda later: _make(later, frozen)
    return _make(cls, frozen)


def _make(cls: type[T], frozen: bool) -> type[T]:
    own = set(cls.__dict__)
    bases = [base for base in cls.__mro__[1:] if "__dataclass_fields__" in base.__dict__]
    if any((base.__setattr__ is _frozen_setattr) != frozen for base in bases):  # type: ignore[comparison-overlap]
        raise TypeError(f"{cls.__qualname__}: a record is frozen or not as the records it extends are (as dataclass)")
    undocumented = not cls.__doc__
    if undocumented:  # (else dataclass writes its signature there, through inspect: 0.5 ms)
        cls.__doc__ = cls.__name__
    made = dataclasses.dataclass(init=False, repr=False, eq=False)(cls)  # the fields; nothing compiled
    if undocumented:
        made.__doc__ = f"{cls.__name__}({', '.join(f.name for f in dataclasses.fields(made))})"  # type: ignore[arg-type]
    if "__init__" not in own:
        made.__init__ = _initializer(made, frozen)  # type: ignore[misc,method-assign]
    if frozen:
        made.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
        made.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
    if "__eq__" not in own:
        made.__eq__ = _eq  # type: ignore[method-assign,assignment]
    # dataclass's rule: a `__hash__` the class writes stays (Python's implicit None next to an
    # own `__eq__` does not count); else frozen records hash their fields, mutable ones none.
    explicit_hash = "__hash__" in own and not (cls.__dict__["__hash__"] is None and "__eq__" in own)
    if not explicit_hash:
        made.__hash__ = _hash if frozen else None  # type: ignore[method-assign,assignment]
    if "__repr__" not in own:
        made.__repr__ = _repr  # type: ignore[method-assign,assignment]
    return made
