"""What a build shows people and CI logs: `--progress auto|plain|tty|quiet`.

Builders report events to a `Reporter`; `make_reporter` picks the one for a mode:

- ``plain``: whole lines, each prefixed with its stage (``[build] #3 [build 2/3] RUN go build``,
  ``[build] hello``, ``[build] #3 DONE 1.2s``); escape codes and carriage returns are removed so
  logs stay readable.
- ``tty``: a live view (rich) with one line per running stage (step, elapsed time, last output
  lines); a finished stage collapses to one line printed above the view.
- ``quiet``: nothing but errors on stderr (with the failed step's last output lines) and the
  final image ID on stdout, like ``docker build -q``.
- ``auto``: ``tty`` on a terminal (and TERM is not ``dumb``), ``plain`` otherwise.

Every method may be called from any thread; lines are written whole. ``rich`` is imported only
when a live view is made, so importing this module stays cheap.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ..errors import UserError
from ..names import short_id

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

MODES = ("auto", "plain", "tty", "quiet")
TAIL_ON_FAILURE = 10  # output lines of a failed step shown with its error (quiet and tty)
TAIL_RUNNING = 3  # output lines shown under a running stage in the live view, room permitting


@dataclass(frozen=True)
class Row:
    """What building one stage gave: one line of the end-of-build table, and what a build
    remembers of it. `image_id` is empty for a stage BuildKit built inside another's solve."""

    stage: str
    image_id: str  # "sha256:…"; shown as 12 hex
    size: int  # bytes, -1 unknown
    seconds: float
    how: str  # "built", "reused" (inputs unchanged, no request), "memo" (built earlier in this process)
    builder: str  # "buildkit" | "classic"


class Reporter(Protocol):
    live: bool  # a live terminal view (per-layer push progress is shown only there)

    def stage_started(self, stage: str) -> None: ...
    def step(self, stage: str, text: str) -> None: ...
    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None: ...
    def output(self, stage: str, line: str) -> None: ...
    def stage_finished(self, stage: str, image_id: str, seconds: float, how: str) -> None: ...
    def stage_failed(self, stage: str, message: str) -> None: ...
    def note(self, text: str, stage: str | None = None) -> None: ...
    def warning(self, text: str) -> None: ...
    def table(self, rows: Sequence[Row], final: str | None) -> None: ...
    def result(self, image_id: str) -> None: ...
    def close(self) -> None: ...


def make_reporter(mode: str, out: TextIO | None = None, err: TextIO | None = None) -> Reporter:
    """The reporter for `mode` (one of MODES), writing to `out` (stdout) and `err` (stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if mode == "auto":
        mode = "tty" if _isatty(out) and os.environ.get("TERM") != "dumb" else "plain"
    if mode == "plain":
        return PlainReporter(out, err)
    if mode == "quiet":
        return QuietReporter(out, err)
    if mode == "tty":
        return LiveReporter(out, err)
    raise UserError(f"--progress {mode}: choose one of {', '.join(MODES)}")


# --- text helpers -------------------------------------------------------------------------

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


def format_table(rows: Sequence[Row], final: str | None) -> str:
    """The end-of-build table; for a final target, a line comparing it with the largest stage."""
    cells = [("stage", "image", "size", "seconds", "builder")]
    for row in rows:
        seconds = f"{row.seconds:.2f}" + (f" ({row.how})" if row.how != "built" else "")
        cells.append((row.stage, short_id(row.image_id), megabytes(row.size), seconds, row.builder))
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in cells)
    shipped = next((row for row in rows if row.stage == final), None)
    others = [row for row in rows if row.stage != final and row.size >= 0]
    if shipped is not None and shipped.size > 0 and others:
        largest = max(others, key=lambda row: row.size)
        ratio = largest.size / shipped.size
        versus = f"{ratio:.0f}x larger" if ratio >= 1 else "smaller than the final image"
        text += (f"\nfinal image '{shipped.stage}': {megabytes(shipped.size)}; largest build stage "
                 f"'{largest.stage}': {megabytes(largest.size)} ({versus})")
    return text + "\n"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _finished_words(how: str, image_id: str) -> str:
    if not image_id:  # built inside another stage's BuildKit solve: no image of its own
        return how
    words = f"{how} {short_id(image_id)}"
    return words + " (inputs unchanged)" if how == "reused" else words


class _StepNumbers:
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


# --- plain ----------------------------------------------------------------------------------

class PlainReporter:
    """Whole lines, each prefixed with its stage; safe for CI logs."""

    live = False  # no live view: per-layer push progress would only fill the log

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self._lock = threading.RLock()
        self._steps = _StepNumbers()

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

    def stage_finished(self, stage: str, image_id: str, seconds: float, how: str) -> None:
        self._write([f"[{stage}] {_finished_words(how, image_id)} in {seconds:.1f}s"])

    def stage_failed(self, stage: str, message: str) -> None:
        self._write([f"[{stage}] ERROR: {' '.join(clean_lines(message))}"])

    def note(self, text: str, stage: str | None = None) -> None:
        prefix = f"[{stage}] " if stage else ""
        self._write([prefix + line for line in clean_lines(text)])

    def warning(self, text: str) -> None:
        self._write([f"warning: {' '.join(clean_lines(text))}"], self.err)

    def table(self, rows: Sequence[Row], final: str | None) -> None:
        self._write(format_table(rows, final).splitlines())

    def result(self, image_id: str) -> None:
        pass  # the table and the notes said it

    def close(self) -> None:
        with self._lock:
            self.out.flush()


# --- quiet ----------------------------------------------------------------------------------

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

    def stage_finished(self, stage: str, image_id: str, seconds: float, how: str) -> None:
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

    def table(self, rows: Sequence[Row], final: str | None) -> None:
        pass

    def result(self, image_id: str) -> None:
        self._write(self.out, [image_id])

    def close(self) -> None:
        pass


# --- live view (tty) ------------------------------------------------------------------------

@dataclass
class _Running:
    started: float
    step: str = ""
    steps: int = 0
    cached: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_ON_FAILURE))


class LiveReporter:
    """A rich live view: one line per running stage (step, elapsed time, its last output lines);
    finished stages, notes and errors are printed above it and stay in the scrollback.

    Lock order: never call rich while holding `self._lock`; rich's refresh thread holds its own
    lock and then takes ours (in `_render`), so the opposite order would deadlock."""

    live = True  # a terminal: per-layer progress is worth showing

    def __init__(self, out: TextIO, err: TextIO) -> None:
        from rich.console import Console  # lazy: only a live view pays for rich

        self.out, self.err = out, err
        self.console: Console = Console(
            file=out, force_terminal=True, force_interactive=True, highlight=False, markup=False,
            emoji=False, soft_wrap=True,
        )
        self._unicode = self.console.encoding.lower().startswith("utf")
        # Warnings go to stderr, but through the view when both streams are the terminal, so
        # they don't tear it; with stderr redirected they go there.
        self._err_via_view = _isatty(out) and _isatty(err)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._spinners: dict[str, Any] = {}  # used by the render thread only
        self._width = 0  # widest stage name seen, to align the view
        self._live: Live | None = None
        self._closed = False

    # rendering (rich's refresh thread, or stop())
    def _render(self) -> RenderableType:
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        # Copy the state; no rich calls while holding the lock. The timeout: a Ctrl-C landing
        # just as a `with` took the lock can leave it held, and the view must still close.
        if not self._lock.acquire(timeout=1):
            return Text("")
        try:
            now = time.monotonic()
            running = [(name, s.step, now - s.started, list(s.tail)) for name, s in self._running.items()]
            width = self._width
        finally:
            self._lock.release()
        # A margin on the right: what the terminal echoes after the view (^C) must not wrap onto a
        # new line, or the view's next redraw would miss its own first line.
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.width = max(self.console.width - 3, 20)
        grid.add_column(width=1, no_wrap=True)
        grid.add_column(width=width, no_wrap=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        room = self.console.height - 2
        tail = TAIL_RUNNING if len(running) * (1 + TAIL_RUNNING) <= room else 0
        for name in set(self._spinners) - {name for name, *_ in running}:
            del self._spinners[name]
        for name, step, elapsed, lines in running[: max(room, 1)]:
            spinner = self._spinners.setdefault(name, Spinner("dots" if self._unicode else "line", style="blue"))
            grid.add_row(spinner, Text(name, style="bold"), Text(step or "starting", overflow="ellipsis"),
                         Text(f"{elapsed:.1f}s", style="cyan"))
            for line in lines[-tail:] if tail else []:
                grid.add_row("", "", Text(line, style="dim", overflow="ellipsis"), "")
        return grid

    def _ensure_live(self) -> None:
        if self._live is not None or self._closed:
            return
        from rich.live import Live

        with self._start_lock:
            if self._live is not None or self._closed:
                return
            live = Live(
                console=self.console, get_renderable=self._render, refresh_per_second=8, transient=True,
                redirect_stdout=self.out is sys.stdout, redirect_stderr=self._err_via_view and self.err is sys.stderr,
            )
            atexit.register(self.close)  # restores the terminal even if the caller forgot to close
            live.start()
            self._live = live

    def _print(self, *renderables: Any) -> None:
        """Lines above the live view. The view is redrawn first, in the same write, so a stage
        that just finished or failed leaves it at once."""
        live = self._live
        with self.console:  # one buffered write (flushed under rich's console lock): no torn lines
            if live is not None and live.is_started:
                live.refresh()
            self.console.print(*renderables, sep="\n")

    def _mark(self, good: bool) -> str:
        if self._unicode:
            return "✔" if good else "✘"
        return "+" if good else "x"

    # events
    def stage_started(self, stage: str) -> None:
        with self._lock:
            self._running.setdefault(stage, _Running(time.monotonic()))
            self._width = max(self._width, len(stage))
        self._ensure_live()

    def _stage(self, stage: str) -> _Running:
        """The state of a running stage (started implicitly); call with the lock held."""
        if stage not in self._running:
            self._running[stage] = _Running(time.monotonic())
            self._width = max(self._width, len(stage))
        return self._running[stage]

    def step(self, stage: str, text: str) -> None:
        with self._lock:
            state = self._stage(stage)
            state.step = (clean_lines(text) or [""])[0]
            state.tail.clear()
        self._ensure_live()

    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None:
        with self._lock:
            state = self._stage(stage)
            state.steps += 1
            state.cached += cached
        self._ensure_live()

    def output(self, stage: str, line: str) -> None:
        with self._lock:
            self._stage(stage).tail.extend(clean_lines(line))
        self._ensure_live()

    def stage_finished(self, stage: str, image_id: str, seconds: float, how: str) -> None:
        from rich.text import Text

        with self._lock:
            state = self._running.pop(stage, None)
            width = self._width = max(self._width, len(stage))
        steps = ""
        if state is not None and state.steps:
            steps = f"  ({state.steps} steps" + (f", {state.cached} cached)" if state.cached else ")")
        self._print(Text.assemble((self._mark(True) + " ", "green"), (stage.ljust(width), "bold"),
                                  f"  {seconds:.1f}s  ", (_finished_words(how, image_id) + steps, "dim")))

    def stage_failed(self, stage: str, message: str) -> None:
        from rich.text import Text

        with self._lock:
            state = self._running.pop(stage, None)
            width = self._width = max(self._width, len(stage))
        elapsed, at, tail = "", "", []
        if state is not None:
            elapsed = f"  {time.monotonic() - state.started:.1f}s"
            at = f"  {state.step}" if state.step else ""
            tail = list(state.tail)
        self._print(Text.assemble((self._mark(False) + " ", "red"), (stage.ljust(width), "bold"), elapsed, at),
                    *(Text(f"  {line}") for line in tail),
                    Text(f"ERROR [{stage}]: {' '.join(clean_lines(message))}", style="bold red"))

    def note(self, text: str, stage: str | None = None) -> None:
        from rich.text import Text

        prefix = f"[{stage}] " if stage else ""
        lines = [prefix + line for line in clean_lines(text)]
        if lines:
            self._print(Text("\n".join(lines)))

    def warning(self, text: str) -> None:
        line = f"warning: {' '.join(clean_lines(text))}"
        if self._err_via_view:
            from rich.text import Text

            self._print(Text(line, style="yellow"))
        else:
            with self._lock:
                self.err.write(line + "\n")
                self.err.flush()

    def table(self, rows: Sequence[Row], final: str | None) -> None:
        from rich.text import Text

        self._print(Text(format_table(rows, final).rstrip("\n")))

    def result(self, image_id: str) -> None:
        pass

    def close(self) -> None:
        """Stops the view (cursor shown again); stages still running are listed as stopped.
        Safe to call twice, from a `finally` after Ctrl-C, or at exit."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            live = self._live
        atexit.unregister(self.close)
        if live is None:
            return
        try:
            stopped, width = [], self._width
            if self._lock.acquire(timeout=1):  # see _render
                try:
                    stopped = [(name, time.monotonic() - s.started, s.step) for name, s in self._running.items()]
                    self._running.clear()
                finally:
                    self._lock.release()
            from rich.text import Text

            for name, elapsed, step in stopped:
                self._print(Text.assemble(("- ", "yellow"), (name.ljust(width), "bold"),
                                          f"  {elapsed:.1f}s  stopped" + (f" at {step}" if step else "")))
        finally:
            live.stop()
            self.out.flush()
