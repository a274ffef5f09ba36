"""Our errors as Invoke's `Exit`: one line on stderr and the error's exit status.

The layers below the glue raise `errors.UserError` and its kinds, knowing nothing of Invoke.
Whatever leaves the glue is also an `invoke.exceptions.Exit`, so Invoke prints it without a
traceback, and a user's `except invoke_compimg.UserError` (or `EngineError`) still catches it.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from ..errors import Interrupted, UserError

F = TypeVar("F", bound=Callable[..., Any])
_KINDS: dict[type[UserError], type[UserError]] = {}


def as_exit(error: UserError) -> UserError:
    """`error`, as an instance of its own class and of Invoke's `Exit`."""
    if isinstance(error, Exit):
        return error
    kind = type(error)
    if kind not in _KINDS:
        _KINDS[kind] = type(kind.__name__, (kind, Exit), {"__module__": kind.__module__})
    exit_error = _KINDS[kind].__new__(_KINDS[kind])
    exit_error.__dict__.update({k: v for k, v in error.__dict__.items() if k != "code"})
    Exit.__init__(exit_error, message=error.message, code=error.code)  # type: ignore[arg-type]  # `code` is a property
    exit_error.args = error.args
    exit_error.__cause__, exit_error.__traceback__ = error.__cause__, error.__traceback__
    return exit_error


def exits(func: F) -> F:
    """A glue entry point: its UserErrors leave as Invoke Exits, and Ctrl-C becomes one line
    and exit status 130, after the `finally` blocks below have removed what this run made
    (temporary containers, staging folders)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            raise as_exit(Interrupted()) from None
        except UserError as error:
            raise as_exit(error) from error.__cause__

    return wrapper  # type: ignore[return-value]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each: clean up, then exit 128 + its number


def ignore_further_interrupts() -> None:
    """After the first Ctrl-C a task cancels its builds, removes what it made and exits with
    status 130. A second Ctrl-C would land in whatever runs then: a `finally` that removes a
    container, an atexit callback ("Exception ignored in atexit callback ... KeyboardInterrupt"
    and a traceback), or Python's finalisation, which has put back the default handler (the
    process then dies of SIGINT instead of exiting 130). So from here on Ctrl-C is ignored.
    Only for tasks, whose process ends now, never for the Python API."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def task_exits(func: F) -> F:
    """`exits` for a task body: after an interruption, further Ctrl-Cs are ignored."""
    inner = exits(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except Interrupted:
            ignore_further_interrupts()
            raise

    return wrapper  # type: ignore[return-value]
