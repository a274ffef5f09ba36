"""`--progress plain`: whole lines, each prefixed with its stage; safe for CI logs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TextIO

from .base import StageResult
from .text import StepNumbers, clean_lines, finished_words, format_table


class PlainReporter:
    """Whole lines, each prefixed with its stage; safe for CI logs."""

    live = False  # no live view: per-layer push progress would only fill the log

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self._lock = threading.RLock()
        self._steps = StepNumbers()

    def _write(self, lines: Sequence[str], stream: TextIO | None = None) -> None:
        if not lines:
            return
        with self._lock:  # one write per event: lines of side-by-side stages never tear
            if stream is not None and stream is not self.out:
                self.out.flush()  # keep stdout's lines before a stderr line
            target = stream or self.out
            target.write("".join(line + "\n" for line in lines))
            target.flush()

    def stage_started(self, stage: str) -> None:
        pass  # its first step says it; a reused stage says so when it finishes

    def step(self, stage: str, text: str) -> None:
        with self._lock:
            number = self._steps.begin(stage, text)
            self._write([f"[{stage}] #{number} {line}" for line in clean_lines(text)[:1]])

    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None:
        with self._lock:
            number = self._steps.find(stage, text)
            lines = []
            if number is None:  # BuildKit reports a cached step only once, done
                number = self._steps.begin(stage, text)
                lines += [f"[{stage}] #{number} {line}" for line in clean_lines(text)[:1]]
            status = "CACHED" if cached else "DONE" + (f" {seconds:.1f}s" if seconds is not None else "")
            self._write([*lines, f"[{stage}] #{number} {status}"])

    def output(self, stage: str, line: str) -> None:
        self._write([f"[{stage}] {text}" for text in clean_lines(line)])

    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None:
        self._write([f"[{stage}] {finished_words(outcome, image_id)} in {seconds:.1f}s"])

    def stage_failed(self, stage: str, message: str) -> None:
        # The error itself is the one line the raised exception prints after this (on stderr):
        # here only where the stage's lines end.
        self._write([f"[{stage}] FAILED"])

    def note(self, text: str, stage: str | None = None) -> None:
        prefix = f"[{stage}] " if stage else ""
        self._write([prefix + line for line in clean_lines(text)])

    def warning(self, text: str) -> None:
        self._write([f"warning: {' '.join(clean_lines(text))}"], self.err)

    def table(self, rows: Sequence[StageResult], final: str | None) -> None:
        self._write(format_table(rows, final).splitlines())

    def result(self, image_id: str) -> None:
        pass  # the table and the notes said it

    def close(self) -> None:
        with self._lock:
            self.out.flush()
