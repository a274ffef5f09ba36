"""What every reporter is, and what building one stage gave."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..records import record

MODES = ("auto", "plain", "tty", "quiet")
TAIL_ON_FAILURE = 10  # output lines of a failed step shown with its error (quiet and tty)
TAIL_RUNNING = 3  # output lines shown under a running stage in the live view, room permitting


@record
class StageResult:
    """What building one stage gave: one line of the end-of-build table, and what a build
    remembers of it. A stage BuildKit built inside another's solve has no image of its own:
    `image_id` is empty, `inside` names the stage whose solve built it, and `size` is at least
    what it is (`at_least`: its base image's size), or unknown."""

    stage: str
    image_id: str  # "sha256:…"; shown as 12 hex
    size: int  # bytes, -1 unknown
    seconds: float
    outcome: str  # "built", "cached" (every step from BuildKit's cache), "shared" (another build ran its steps
    # for this one too), "reused" (inputs unchanged, no request), "memo" (built earlier in this process),
    # "pushed"/"exported" (a solve that keeps no image)
    builder: str  # "buildkit" | "classic"
    inside: str = ""  # the stage whose solve built this one (it has no image of its own)
    at_least: bool = False  # `size` is a lower bound (its base image's size), not the stage's own


class Reporter(Protocol):
    live: bool  # a live terminal view (per-layer push progress is shown only there)

    def stage_started(self, stage: str) -> None: ...
    def step(self, stage: str, text: str) -> None: ...
    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None: ...
    def output(self, stage: str, line: str) -> None: ...
    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None: ...
    def stage_failed(self, stage: str, message: str) -> None: ...  # the raised error prints `message`
    def note(self, text: str, stage: str | None = None) -> None: ...
    def warning(self, text: str) -> None: ...
    def table(self, rows: Sequence[StageResult], final: str | None) -> None: ...
    def result(self, image_id: str) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    """Shows nothing: for work a user did not ask to watch (the solve behind an extraction)."""

    live = False

    def stage_started(self, stage: str) -> None: pass
    def step(self, stage: str, text: str) -> None: pass
    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None: pass
    def output(self, stage: str, line: str) -> None: pass
    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None: pass
    def stage_failed(self, stage: str, message: str) -> None: pass
    def note(self, text: str, stage: str | None = None) -> None: pass
    def warning(self, text: str) -> None: pass
    def table(self, rows: Sequence[StageResult], final: str | None) -> None: pass
    def result(self, image_id: str) -> None: pass
    def close(self) -> None: pass


QUIET = NullReporter()
