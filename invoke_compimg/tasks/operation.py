"""An operation is one function that is at once a task body and a Python API function.

    @operation("build", help={"target": "..."}, repeatable=("tag",))
    def build(c, bound, target=None, tag=None, ...): ...

The body takes the context, then the `Binding` (which Dockerfile, config key, ...), then its
flags: ordinary parameters, whose names, defaults and types are the CLI's flags. What the
decorator returns is the Python API: `build(c, target=..., dockerfile=..., context=...,
key=..., base=...)`, relative paths from the calling module's folder. `collection()` makes
each operation's task with `Operation.task(binding)`.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from invoke import Argument, Context, Task

from ..records import record
from . import build_flags
from .binding import Binding, caller_folder
from .exits import exits, task_exits

# Short flags, chosen on purpose and the same on every task: docker build's letters, and none
# of Invoke's core flags (which Invoke would take for its own after a task, in silence).
SHORT_FLAGS: dict[str, str] = {"tag": "t", "quiet": "q", "output": "o"}
# Invoke's per-task `-h` (help) is kept free.
RESERVED_SHORT = {"h"}


@record
class Operation:
    name: str  # the task's name: "build-stage"
    body: Callable[..., Any]  # (c, binding, *flags)
    help: Mapping[str, str] = field(default_factory=dict)  # flag (dashed) -> help text
    repeatable: tuple[str, ...] = ()  # list flags (`--tag A --tag B`)

    def flags(self) -> list[inspect.Parameter]:
        """The CLI's flags and positional arguments, in order (after `c` and the binding)."""
        return list(inspect.signature(self.body).parameters.values())[2:]

    def positional(self) -> list[str]:
        return [p.name for p in self.flags() if p.default is inspect.Parameter.empty]

    def switches(self) -> list[str]:
        """The flags that take no value (`--no-cache`), dashed."""
        return [p.name.replace("_", "-") for p in self.flags() if isinstance(p.default, bool)]

    def task(self, bound: Binding, **options: Any) -> CompimgTask:
        @task_exits
        def body(c: Context, *args: Any, **kwargs: Any) -> Any:
            if _run_by_invoke(sys.argv):
                refuse_core_flags_after(self.name, sys.argv[1:])
            return self.body(c, bound, *args, **kwargs)

        signature = inspect.signature(self.body)
        params = list(signature.parameters.values())
        body.__signature__ = signature.replace(parameters=[params[0], *params[2:]])  # type: ignore[attr-defined]
        body.__doc__ = self.body.__doc__
        return CompimgTask(body, name=self.name, help=dict(self.help), iterable=list(self.repeatable), **options)


OPERATIONS: dict[str, Operation] = {}
DEFAULT_TASK = "build"  # the collection's default: what `invoke compimg` and a bare `compimg` run

# Invoke's core flags that it reads only to find the tasks: given after a task it takes them as
# its own all the same, too late to do anything (`invoke compimg.build-stage x -r quiet` built
# with plain output, in silence).
LOAD_TIME_FLAGS = {"-r": "--search-root", "--search-root": "--search-root", "-c": "--collection",
                   "--collection": "--collection"}


def refuse_core_flags_after(task: str, argv: list[str]) -> None:
    """One line for a load-time core flag given after `task` on the command line `argv`."""
    from ..errors import UserError

    words = [w.partition("=")[0] for w in argv]
    after = next((i for i, w in enumerate(words) if w == task or w.endswith("." + task)), None)
    if after is None:
        return
    for word in words[after + 1:]:
        if word == "--":
            return
        if word in LOAD_TIME_FLAGS:
            raise UserError(f"{word} after the task is Invoke's own {LOAD_TIME_FLAGS[word]}, read only before the "
                            f"first task, so it would do nothing; put it before the task, or see "
                            f"`invoke --help <task>` for the task's own flags")


def _run_by_invoke(argv: list[str]) -> bool:
    """Is this the `invoke` (or `inv`) command? (The `compimg` command checks its own words.)"""
    first = Path(argv[0]) if argv else Path()
    return first.name in ("invoke", "inv") or (first.name == "__main__.py" and first.parent.name == "invoke")


def operation(name: str, *, help: Mapping[str, str] | None = None, repeatable: tuple[str, ...] = (),
              builds: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the body as operation `name` and return its Python API function.

    `builds`: the task builds, so it takes every build flag (`build_flags.BuildFlags`, after
    its own), and its body gets them as one keyword argument, `build_flags`; `help` may
    word a build flag for this task."""
    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        if builds:
            op = Operation(name, exits(_taking_build_flags(body)), {**build_flags.helps(), **(help or {})},
                           (*repeatable, *build_flags.repeatable()))
        else:
            op = Operation(name, exits(body), dict(help or {}), repeatable)
        OPERATIONS[name] = op

        @functools.wraps(body)
        def api(c: Context, *args: Any, dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
                key: str = "compimg", base: str | Path | None = None, **flags: Any) -> Any:
            root = Path(base) if base is not None else caller_folder(sys._getframe(1))
            return op.body(c, Binding.of(dockerfile, context, key, root=root), *args, **flags)

        params = list(inspect.signature(op.body).parameters.values())
        where = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, d, a in (
            ("dockerfile", "Dockerfile", "str | Path"), ("context", ".", "str | Path"), ("key", "compimg", "str"),
            ("base", None, "str | Path | None"))]
        api.__signature__ = inspect.signature(op.body).replace(  # type: ignore[attr-defined]
            parameters=[params[0], *params[2:], *where])
        api.operation = op  # type: ignore[attr-defined]
        return api

    return register


def _taking_build_flags(body: Callable[..., Any]) -> Callable[..., Any]:
    """`body(c, bound, *own, build_flags=BuildFlags)` as a function of its own flags and every
    build flag, flat: what the task and the Python API take."""
    own = [p for p in inspect.signature(body).parameters.values() if p.name != "build_flags"]
    shared = build_flags.names()

    @functools.wraps(body)
    def flat(c: Context, bound: Binding, *args: Any, **kwargs: Any) -> Any:
        from ..engine.client import ask_early

        ask_early()  # a building task asks the engine what it is: meanwhile, flags and config are read
        given = {k: kwargs.pop(k) for k in shared & kwargs.keys()}
        return body(c, bound, *args, build_flags=build_flags.BuildFlags(**given), **kwargs)

    flat.__signature__ = inspect.Signature([*own, *build_flags.parameters()])  # type: ignore[attr-defined]
    return flat


class CompimgTask(Task):  # type: ignore[misc]
    """A task that is equal only to itself, whose short flags are the ones we chose.

    Invoke's `Task.__eq__` compares the name and the body's code object, so tasks made by
    one closure (one per stage, or the same task in two collections) would be taken for one
    another and deduplicated away."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        long = name.replace("_", "-")
        opts["names"] = (long, SHORT_FLAGS[name]) if name in SHORT_FLAGS else (long,)
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args: list[Argument] = super().get_arguments(ignore_unknown_help)
        for arg in args:
            arg.__class__ = _Flag
            if arg.kind is list:
                # Invoke starts a list flag's raw value at [], so a trailing `--tag` with no
                # value passed silently (an untagged build); None makes its parser say so.
                arg.raw_value = None
        return args


class _Flag(Argument):  # type: ignore[misc]
    """An argument that Invoke's parse errors name as the user typed it: "Flag --tag
    needed value and was not given one!"."""

    def __repr__(self) -> str:
        return "--" + str(self.name).replace("_", "-")
