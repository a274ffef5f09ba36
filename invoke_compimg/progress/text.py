"""Text shared by the reporters: printable lines, sizes, the end-of-build table."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any, TextIO

from ..names import short_id
from .base import StageResult

_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_lines(text: str) -> list[str]:
    """`text` as printable lines: escape codes dropped, and of a line redrawn with carriage
    returns (progress bars) only what a terminal would leave visible. Blank lines are dropped."""
    lines = []
    for raw in _ESCAPE.sub("", text).split("\n"):
        parts = [part for part in raw.split("\r") if part.strip()]
        line = _CONTROL.sub("", parts[-1]).rstrip() if parts else ""
        if line.strip():
            lines.append(line)
    return lines


def megabytes(size: int) -> str:
    return "?" if size < 0 else f"{size / 1e6:.1f} MB"


def _image_cell(row: StageResult) -> str:
    if row.image_id:
        return short_id(row.image_id)
    if row.inside:  # BuildKit built it in another stage's solve: in its cache, no image
        return f"none (in {row.inside}'s solve)"
    return "none"  # a solve that keeps no image (pushed, exported, or only cached)


def _size_cell(row: StageResult) -> str:
    if row.size < 0:
        return "-"  # not measured: the image column says why (no image of its own)
    return (">= " if row.at_least else "") + megabytes(row.size)


def format_table(rows: Sequence[StageResult], final: str | None) -> str:
    """The end-of-build table; for a final target, a line comparing it with the largest stage."""
    cells = [("stage", "image", "size", "seconds", "builder")]
    for row in rows:
        seconds = f"{row.seconds:.2f}" + (f" ({row.outcome})" if row.outcome != "built" else "")
        cells.append((row.stage, _image_cell(row), _size_cell(row), seconds, row.builder))
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in cells)
    comparison = compare_sizes(rows, final)
    return text + (f"\n{comparison}" if comparison else "") + "\n"


def compare_sizes(rows: Sequence[StageResult], final: str | None) -> str:
    """`final image 'run': 3.8 MB; largest build stage 'build': 462.0 MB (121x larger)`, or ""
    when there is nothing to compare. A stage built inside a solve has no image to measure: its
    base image's size is what it has at least, said so, with how to see its own size."""
    shipped = next((row for row in rows if row.stage == final), None)
    others = [row for row in rows if row.stage != final and row.size > 0]
    if shipped is None or shipped.size <= 0 or shipped.at_least or not others:
        return ""
    largest = max(others, key=lambda row: (row.size, not row.at_least))
    ratio = largest.size / shipped.size
    line = f"final image '{shipped.stage}': {megabytes(shipped.size)}; largest build stage '{largest.stage}': "
    if not largest.at_least:
        return line + f"{megabytes(largest.size)} ({_versus(ratio)})"
    line += f"at least {megabytes(largest.size)}, its base image"
    if ratio >= 1.05:
        line += f" (at least {_versus(ratio)})"
    return line + f"; for its own size give it an image: --tag {largest.stage}=REF"


def _versus(ratio: float) -> str:
    if ratio >= 1.95:
        return f"{ratio:.0f}x larger"
    if ratio >= 1.05:
        return f"{(ratio - 1) * 100:.0f}% larger"
    if ratio > 0.95:
        return "about the same size"
    return "smaller than the final image"


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def finished_words(outcome: str, image_id: str) -> str:
    if outcome == "shared":
        return "built by another build"  # BuildKit ran its steps once, for both
    if not image_id:  # built inside another stage's BuildKit solve: no image of its own
        return outcome
    words = f"{outcome} {short_id(image_id)}"
    return words + " (inputs unchanged)" if outcome == "reused" else words


class StepNumbers:
    """BuildKit-style `#N` step numbers, unique in one build, so a DONE line names its step even
    when steps of one stage run side by side. Callers hold their own lock."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str], int] = {}
        self._last: dict[str, int] = {}
        self._next = 1

    def begin(self, stage: str, text: str) -> int:
        number = self._numbers[(stage, text)] = self._last[stage] = self._next
        self._next += 1
        return number

    def find(self, stage: str, text: str) -> int | None:
        """The number of a started step (an empty `text` means the stage's latest), else None."""
        if not text:
            return self._last.get(stage)
        return self._numbers.get((stage, text))


class ReaderMayLeave:
    """stdout for progress lines, whose reader may leave (`compimg build | head -2`): the build
    goes on without its progress, as `docker build` does, instead of dying of a broken pipe.
    The file descriptor then points at /dev/null, so Python's last flush cannot fail either."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._left()

    def _left(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)
