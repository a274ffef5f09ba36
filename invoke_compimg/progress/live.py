"""`--progress tty`: a live view (rich), one line per running stage; rich is imported only here,
and only when a view is made."""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any, TextIO

from ..records import record
from .base import TAIL_ON_FAILURE, TAIL_RUNNING, StageResult
from .text import clean_lines, finished_words, format_table, isatty

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live


@record(frozen=False)
class _Running:
    started: float
    step: str = ""
    step_done: bool = False  # the step above finished: the stage waits (for another stage, say)
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
        self._err_via_view = isatty(out) and isatty(err)
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
            state.step_done = False
            state.tail.clear()
        self._ensure_live()

    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None:
        with self._lock:
            state = self._stage(stage)
            state.steps += 1
            state.cached += cached
            line = (clean_lines(text) or [""])[0]
            if not line or line == state.step:
                state.step_done = True
            elif not state.step:  # BuildKit reports a cached step only once, done
                state.step, state.step_done = line, True
        self._ensure_live()

    def output(self, stage: str, line: str) -> None:
        with self._lock:
            self._stage(stage).tail.extend(clean_lines(line))
        self._ensure_live()

    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None:
        from rich.text import Text

        with self._lock:
            state = self._running.pop(stage, None)
            width = self._width = max(self._width, len(stage))
        steps = ""
        if state is not None and state.steps:
            steps = f"  ({state.steps} step{'s' if state.steps > 1 else ''}" + (
                f", {state.cached} cached)" if state.cached else ")")
        self._print(Text.assemble((self._mark(True) + " ", "green"), (stage.ljust(width), "bold"),
                                  f"  {seconds:.1f}s  ", (finished_words(outcome, image_id) + steps, "dim")))

    def stage_failed(self, stage: str, message: str) -> None:
        """The failed stage, its step and that step's last output lines; the error itself is the
        one line the raised exception prints after the view has closed."""
        from rich.text import Text

        with self._lock:
            state = self._running.pop(stage, None)
            width = self._width = max(self._width, len(stage))
        elapsed, at, tail = "", "", []
        if state is not None:
            elapsed = f"  {time.monotonic() - state.started:.1f}s"
            at = f"  {state.step}" if state.step else ""
            tail = list(state.tail)
        self._print(Text.assemble((self._mark(False) + " ", "red"), (stage.ljust(width), "bold"), elapsed,
                                  (at, "red")),
                    *(Text(f"  {line}") for line in tail))

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

    def table(self, rows: Sequence[StageResult], final: str | None) -> None:
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
                    stopped = [(name, time.monotonic() - s.started, s.step, s.step_done)
                               for name, s in self._running.items()]
                    self._running.clear()
                finally:
                    self._lock.release()
            from rich.text import Text

            for name, elapsed, step, done in stopped:
                where = f" {'after' if done else 'at'} {step}" if step else ""
                self._print(Text.assemble(("- ", "yellow"), (name.ljust(width), "bold"),
                                          f"  {elapsed:.1f}s  stopped{where}"))
        finally:
            live.stop()
            self.out.flush()
