"""`--progress quiet`: errors only (with the failed step's last output lines), and the image
ID, like `docker build -q`."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TextIO

from .base import TAIL_ON_FAILURE, StageResult
from .text import clean_lines


class QuietReporter:
    """Errors on stderr, with the failed step's last output lines; the image ID on stdout."""

    live = False

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self._lock = threading.Lock()
        self._tails: dict[str, deque[str]] = {}

    def _tail(self, stage: str) -> deque[str]:
        return self._tails.setdefault(stage, deque(maxlen=TAIL_ON_FAILURE))

    def _write(self, stream: TextIO, lines: Sequence[str]) -> None:
        with self._lock:
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()

    def stage_started(self, stage: str) -> None:
        with self._lock:
            self._tail(stage).clear()

    def step(self, stage: str, text: str) -> None:
        with self._lock:  # the tail shown on failure is the failed step's own
            self._tail(stage).clear()

    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None:
        pass

    def output(self, stage: str, line: str) -> None:
        with self._lock:
            self._tail(stage).extend(clean_lines(line))

    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None:
        with self._lock:
            self._tails.pop(stage, None)

    def stage_failed(self, stage: str, message: str) -> None:
        with self._lock:
            tail = list(self._tails.pop(stage, ()))
        # The error itself is the one line the raised exception prints after this.
        self._write(self.err, [f"[{stage}] {line}" for line in tail])

    def note(self, text: str, stage: str | None = None) -> None:
        pass

    def warning(self, text: str) -> None:
        self._write(self.err, [f"warning: {' '.join(clean_lines(text))}"])

    def table(self, rows: Sequence[StageResult], final: str | None) -> None:
        pass

    def result(self, image_id: str) -> None:
        self._write(self.out, [image_id])

    def close(self) -> None:
        pass
