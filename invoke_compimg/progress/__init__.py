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

import os
import sys
from typing import TextIO, cast

from ..errors import UserError
from .base import MODES, QUIET, NullReporter, Reporter, StageResult
from .live import LiveReporter
from .plain import PlainReporter
from .quiet import QuietReporter
from .text import ReaderMayLeave, clean_lines, format_table, isatty

__all__ = [
    "MODES", "QUIET", "LiveReporter", "NullReporter", "PlainReporter", "QuietReporter", "Reporter", "StageResult",
    "clean_lines", "format_table", "make_reporter",
]


def make_reporter(mode: str, out: TextIO | None = None, err: TextIO | None = None) -> Reporter:
    """The reporter for `mode` (one of MODES), writing to `out` (stdout) and `err` (stderr)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if out is sys.stdout:
        out = cast(TextIO, ReaderMayLeave(out))
    if mode == "auto":
        mode = "tty" if isatty(out) and os.environ.get("TERM") != "dumb" else "plain"
    if mode == "plain":
        return PlainReporter(out, err)
    if mode == "quiet":
        return QuietReporter(out, err)
    if mode == "tty":
        return LiveReporter(out, err)
    raise UserError(f"--progress {mode}: choose one of {', '.join(MODES)}")
