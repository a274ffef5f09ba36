"""The classic builder: one build request per stage, other stages by exact image ID.

Docker's and Podman's classic `/build` stream text lines; `Step 2/3 : ...` (Podman:
`STEP 2/3: ...`) says which line of the lowered Dockerfile runs, and `lowering.Step`
maps it back to the user's instruction, so errors and progress quote the user's file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

from ..dockerfile.lowering import PLACEHOLDER_RE, Lowered, Step, keyword
from ..engine import client as engine
from ..errors import EngineError, one_line
from ..progress import Reporter, clean_lines

if TYPE_CHECKING:
    import docker

_STEP_RE = re.compile(r"^(?:Step|STEP) (\d+)/(\d+) ?: ")
# Engine bookkeeping lines that name its own container and layer IDs, not the user's build.
_NOISE_RE = re.compile(r"^( ---> (?!Using cache)|Removing intermediate container |Successfully built |"
                       r"Successfully tagged |COMMIT|--> |[0-9a-f]{64}$)")  # the last: Podman's image ID


def network_for(requested: str | None, podman: bool) -> str | None:
    """The network mode to send: Podman's compatible API ignores `none` (a RUN step still
    sees the host's interfaces); its word for no network is NetworkDisabled."""
    return "NetworkDisabled" if requested == "none" and podman else requested


def _same(sent: str, shown: str) -> bool:
    """Is `shown` (a step line's text) the line we sent (spaces folded; a stage reference,
    sent as a placeholder, shown as an image ID)?"""
    a, b = (PLACEHOLDER_RE.sub("", " ".join(t.split())) for t in (sent, shown))
    b = re.sub(r"sha256:[0-9a-f]{64}", "", b)
    return a == b


class _Stream:
    """Turns one stage's classic build stream into reporter events."""

    def __init__(self, stage: str, lowered: Lowered, reporter: Reporter) -> None:
        self.stage = stage
        self.lowered = lowered
        self.reporter = reporter
        self.sent: Step | None = None  # the lowered line running now
        self.step_text = ""
        self.cached = False
        self.partial = ""  # the engine splits long lines across messages
        self.errors: list[str] = []
        self.tail: list[str] = []

    def log(self, text: str) -> None:
        text = self.partial + text
        complete, _, self.partial = text.rpartition("\n")
        if complete or text.endswith("\n"):
            for line in complete.split("\n"):
                self.line(line)

    def line(self, line: str) -> None:
        match = _STEP_RE.match(line)
        if match:
            self.finish_step()
            self.cached = False
            self.sent = self.find(int(match.group(1)), line[match.end():])
            source = (self.sent.text if self.sent and "ONBUILD trigger" in self.sent.text
                      else self.sent.source.text if self.sent else line[match.end():])
            self.step_text = f"[{self.stage} {match.group(1)}/{match.group(2)}] {one_line(source, 200)}"
            self.reporter.step(self.stage, self.step_text)
        elif line.strip() == "---> Using cache":
            self.cached = True
        elif not _NOISE_RE.match(line) and line.strip():
            self.tail = (self.tail + clean_lines(line))[-10:]
            self.reporter.output(self.stage, line)

    def find(self, number: int, text: str) -> Step | None:
        """The lowered line that step `number` runs. Docker numbers the lines of the file;
        Podman also counts the base image's ONBUILD triggers, so when the numbered line is not
        the instruction shown, the one whose text it is wins."""
        steps = self.lowered.steps
        candidate = steps[number - 1] if 0 < number <= len(steps) else None
        if candidate is not None and keyword(candidate.text) == keyword(text):
            return candidate
        matching = [s for s in steps if _same(s.text, text)]
        if len(matching) == 1:
            return matching[0]
        # None of ours: a trigger of the base image, which the stage's FROM brought in.
        base = next((s for s in steps if keyword(s.text) == "FROM"), None)
        return Step(f"{base.source.text} (its ONBUILD trigger {text})", base.source) if base else candidate

    def finish_step(self) -> None:
        if self.step_text:
            self.reporter.step_done(self.stage, self.step_text, None, self.cached)
            self.step_text = ""

    def close(self) -> None:
        if self.partial:
            self.line(self.partial)
            self.partial = ""


def build(api: docker.APIClient, *, stage: str, lowered: Lowered, ids: Mapping[str, str], dockerfile: str,
          archive: IO[bytes], build_args: Mapping[str, str], no_cache: bool, network: str | None,
          cache_from: tuple[str, ...], reporter: Reporter, where: str, line: int, tag: str | None = None) -> str:
    """Build stage `stage` from `archive` (its lowered Dockerfile with the placeholders
    filled from `ids`, and the context files it reads); return the image ID. A failure is
    one EngineError line, `Dockerfile:LINE: stage 'x' failed at INSTRUCTION: message`, with
    the user's line and instruction, and stage names where the engine said image IDs.
    `tag` names the image as it is made, so it is never an unnamed image that a prune
    running at the same moment could take."""
    stream = _Stream(stage, lowered, reporter)

    def on_event(event: engine.BuildEvent) -> None:
        if event.kind == "error":
            stream.errors.append(event.text.strip())
        else:
            stream.log(event.text)

    try:
        with engine.engine_errors(f"stage '{stage}'", where=where, line=line):
            image_id = engine.build(api, archive, dockerfile=dockerfile, build_args=build_args, no_cache=no_cache,
                                    network=network, cache_from=cache_from, tag=tag, on_event=on_event)
    finally:
        stream.close()
    if stream.errors or image_id is None:
        at, instruction = line, ""
        if stream.sent is not None:
            source = stream.sent.source
            shown = stream.sent.text if "ONBUILD trigger" in stream.sent.text else source.text
            at, instruction = source.line, " at " + one_line(shown)
        reason = stream.errors[-1] if stream.errors else "the engine's stream ended without an image ID"
        for name, image_id in ids.items():
            reason = reason.replace(image_id, f"stage '{name}'").replace(image_id.split(":")[-1], name)
        raise EngineError(f"stage '{stage}' failed{instruction}: {one_line(reason, 300)}", where=where, line=at)
    stream.finish_step()
    return image_id

