"""The error types users see: a single line, an exit status, no traceback.

Pure: nothing here knows Invoke. The glue (`tasks/`) hands every one of these that leaves an
operation to Invoke as its ``Exit`` as well (`tasks.exits.as_exit`), so Invoke prints the
line and exits with its code, from a task, the console script or a user's own task body.
"""

from __future__ import annotations

from typing import ClassVar


class UserError(Exception):
    """A mistake the user can fix: ``where: what is wrong; what to do``. `code` is the
    exit status (1; 130 for Ctrl-C)."""

    def __init__(self, message: str, *, where: str | None = None, line: int | None = None,
                 code: int = 1) -> None:
        location = where or ""
        if where and line is not None:
            location = f"{where}:{line}"
        self.line = line
        full = f"{location}: {message}" if location else message
        # Invoke prints ``message`` to stderr itself; keep it one line.
        self.message = " ".join(full.splitlines())
        self.code = code
        super().__init__(self.message)

    def __str__(self) -> str:
        return str(self.message)


class EngineError(UserError):
    """The Docker engine (or the SDK talking to it) refused or failed something. `stage`: the
    stage whose step failed, when one did (it may be another than the one requested)."""

    def __init__(self, message: str, *, where: str | None = None, line: int | None = None, code: int = 1,
                 stage: str | None = None) -> None:
        super().__init__(message, where=where, line=line, code=code)
        self.stage = stage


class Interrupted(UserError):
    """Ctrl-C (exit 130), or SIGTERM (143: a cancelled CI job) or SIGHUP (129: a closed
    terminal), after cleaning up: `detail` says what was done."""

    WORDS: ClassVar[dict[int, str]] = {130: "interrupted", 143: "terminated", 129: "hung up"}  # 128 + signal

    def __init__(self, detail: str = "running builds were cancelled on the engine; temporary containers and "
                                     "folders of this run were removed", code: int = 130) -> None:
        super().__init__(f"{self.WORDS.get(code, 'interrupted')}: {detail}", code=code)
        self.detail = detail


def one_line(text: str, limit: int = 120) -> str:
    """`text` (an instruction, an engine message) folded to one line of at most `limit`."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BuildRejected(EngineError):
    """The engine refused a build request before any progress (HTTP 4xx/5xx): a Dockerfile
    it cannot parse, an unknown target, a bad option. `engine_message` is its text, unchanged."""

    def __init__(self, engine_message: str, status_code: int | None) -> None:
        self.engine_message = engine_message
        self.status_code = status_code
        super().__init__(f"the engine refused the build: {engine_message}")


class UpgradeRefused(EngineError):
    """The engine did not switch protocols at `path` (an engine without that endpoint)."""

    def __init__(self, path: str, status: int, text: str) -> None:
        self.path, self.status = path, status
        super().__init__(f"the Docker engine does not serve POST {path} (it answered {status} {text})".rstrip())
