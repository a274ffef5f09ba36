"""Work started ahead of its use: run on a thread of its own from now, its answer (or what it
raised) handed over when it is needed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Ahead(Generic[T]):
    """`work()` on a daemon thread named `name`, started now; `result()` waits for it and
    returns its answer, or raises what it raised, on the caller's thread."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._work = work
        self._answer: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._answer = self._work()
        except BaseException as exc:  # said where the answer is needed, as doing it then would have
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._answer  # type: ignore[return-value]  # set: the work returned
