"""The BuildKit builder: one solve of every stage a target needs, through the engine's own
BuildKit (`buildkit.solve`), with its progress shown in the user's terms.

BuildKit names each step `[stage i/n] INSTRUCTION`, counting only the instructions that
make a build step (FROM, RUN, COPY, ADD, WORKDIR); `Step.source` of the lowered stage
then gives the user's own instruction and line, for progress and for errors.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from ..dockerfile.lowering import CONTEXT_PREFIX, keyword
from ..engine import buildkit
from ..engine import client as engine
from ..errors import EngineError, one_line

if TYPE_CHECKING:
    import docker

    from ..dockerfile.lowering import Lowered, Step
    from ..progress import Reporter

# Instructions that become a BuildKit step (and so count in `[stage i/n]`).
_STEP_KEYWORDS = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})
_PARSE_ERROR_LINE = re.compile(r"(?:dockerfile parse error )?line (\d+): ")
# Our folder at the start of a path in an engine message (`"/ctx/a"`, `ctx/a`), never a
# `ctx` inside the user's own path (`sub/ctx/b`).
_PREFIXED_PATH = re.compile(r'(?<=["\s])/?' + re.escape(CONTEXT_PREFIX))


def _is_step(step: Step) -> bool:
    """Does BuildKit count this line in `[stage i/n]`? Instructions that make a build step
    do, except a FROM of an earlier stage, which continues that stage's state."""
    if step.source.keyword == "FROM" and getattr(step.source, "stage", None):
        return False
    return keyword(step.text) in _STEP_KEYWORDS


def plain_paths(text: str) -> str:
    """An engine message with our `ctx/` folder taken out of its paths."""
    return _PREFIXED_PATH.sub(lambda m: "/" if m.group(0).startswith("/") else "", text)


@dataclass
class Outcome:
    image_id: str
    stage_seconds: dict[str, float]


class _View:
    """BuildKit progress -> reporter events, in the user's words."""

    def __init__(self, target: str, lowered: Lowered, reporter: Reporter) -> None:
        self.target = target
        self.lowered = lowered
        self.reporter = reporter
        self.progress = buildkit.Progress()
        self.steps = {stage: [s for s in steps if _is_step(s)] for stage, steps in lowered.stages.items()}
        self.titles: dict[str, tuple[str, str]] = {}  # vertex digest -> (stage, title)

    def source(self, step: buildkit.StepName) -> tuple[str, Step | None]:
        stage = step.stage if step.stage and step.stage in self.steps else self.target
        found = self.steps.get(stage, [])
        if step.index is not None and 0 < step.index <= len(found):
            candidate = found[step.index - 1]
            if keyword(candidate.text) == keyword(step.text):
                return stage, candidate
        # Counted differently than we think (a BuildKit version's own rule): match the text.
        same = [s for s in found if " ".join(s.text.split()) == " ".join(step.text.split())]
        return stage, same[0] if len(same) == 1 else None

    def title(self, event: buildkit.ProgressEvent) -> tuple[str, str] | None:
        if event.vertex in self.titles:
            return self.titles[event.vertex]
        step = event.step
        if step.stage == "internal" or (step.index is None and step.stage is None
                                        and not event.name.startswith("exporting")):
            return None  # context transfer, metadata: BuildKit's own bookkeeping
        stage, source = self.source(step)
        if source is not None:
            text = f"[{stage} {step.index}/{step.total}] {one_line(source.source.text, 200)}"
        else:
            text = plain_paths(event.name)
        self.titles[event.vertex] = (stage, text)
        return stage, text

    def feed(self, status: buildkit.StatusResponse) -> None:
        for event in self.progress.feed(status):
            self.show(event)

    def show(self, event: buildkit.ProgressEvent) -> None:
        found = self.title(event)
        if found is None:
            return
        stage, text = found
        if event.kind == "start":
            self.reporter.step(stage, text)
        elif event.kind == "log":
            self.reporter.output(stage, event.text)
        elif event.kind in ("cached", "done"):
            self.reporter.step_done(stage, text, event.seconds, event.kind == "cached")
        elif event.kind == "warning":
            self.reporter.warning(f"[{stage}] {event.text}")

    def finish(self) -> None:
        for event in self.progress.finish():
            self.show(event)

    def failure(self, error: str | None, where: str, fallback_line: int) -> EngineError:
        """The failed step as `Dockerfile:LINE: stage 'x' failed at INSTRUCTION: message`.
        A frontend error names a line of the file we sent: it is mapped to the user's."""
        parse_error = _PARSE_ERROR_LINE.search(error or "")
        if parse_error and int(parse_error.group(1)) in self.lowered.lines:
            sent = self.lowered.lines[int(parse_error.group(1))]
            stage = next((name for name, steps in self.lowered.stages.items() if sent in steps), self.target)
            message = _PARSE_ERROR_LINE.sub("", plain_paths(_reason(error or "")))
            return EngineError(f"stage '{stage}' failed at {one_line(sent.source.text)}: "
                               f"{one_line(message, 300)}; fix that line", where=where, line=sent.source.line)
        for vertex in self.progress.failed():
            step = buildkit.parse_name(vertex.name)
            if step.stage == "internal":
                found = self._base_image_failure(step.text, vertex.error or error or "failed", where)
                if found is not None:
                    return found
                continue
            stage, source = self.source(step)
            if source is not None:
                message = plain_paths(_reason(vertex.error or error or "failed"))
                return EngineError(f"stage '{stage}' failed at {one_line(source.source.text)}: "
                                   f"{one_line(message, 300)}", where=where, line=source.source.line)
        message = plain_paths(_reason(error or "the solve ended without an image"))
        return EngineError(f"stage '{self.target}' failed: {one_line(message, 300)}", where=where,
                           line=fallback_line)


    def _base_image_failure(self, text: str, message: str, where: str) -> EngineError | None:
        """`[internal] load metadata for docker.io/library/x:y` failed: the stage whose FROM
        names that image, at its line (not the target's)."""
        if not text.startswith("load metadata for "):
            return None
        wanted = _plain_image(text[len("load metadata for "):])
        for stage, steps in self.lowered.stages.items():
            base = steps[0].source if steps else None
            if base is not None and _plain_image(str(getattr(base, "image", ""))) == wanted:
                return EngineError(f"stage '{stage}' failed at {one_line(base.text)}: "
                                   f"{one_line(plain_paths(_reason(message)), 300)}; check the image name and tag",
                                   where=where, line=base.line)
        return None


def _plain_image(ref: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    return ref if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else ref + ":latest"


def _reason(text: str) -> str:
    """BuildKit wraps the cause in its own layers; keep the part a user acts on."""
    for marker in ("failed to solve with frontend dockerfile.v0: ", "failed to solve: ",
                   "failed to create LLB definition: "):
        text = text.replace(marker, "")
    return text.strip()


def solve(api: docker.APIClient, *, target: str, lowered: Lowered, archive: IO[bytes], dockerfile: str,
          build_args: Mapping[str, str], no_cache: bool, network: str | None,
          cache_from: Sequence[str], reporter: Reporter, where: str, line: int,
          running: Callable[[str | None], None], tags: Sequence[str] = ()) -> Outcome:
    """One solve of `lowered` (every stage `target` needs) with `target` as its result.
    `dockerfile` is its name in the archive. `running(build_id)` hears the solve's ID while
    it runs and None after, so that Ctrl-C can cancel it on the engine."""
    view = _View(target, lowered, reporter)
    build_id = f"compimg-{uuid.uuid4().hex}"
    running(build_id)
    try:
        with engine.engine_errors(f"stage '{target}'", where=where, line=line):
            result = buildkit.solve(api, archive, dockerfile=dockerfile, target=target,
                                    build_args=build_args, no_cache=no_cache,
                                    network=buildkit.network_for(api, network), cache_from=cache_from,
                                    build_id=build_id, on_status=view.feed, tags=tags)
    except buildkit.BuildRejected as exc:
        raise EngineError(f"stage '{target}': the engine refused the build: "
                          f"{one_line(plain_paths(_reason(exc.engine_message)), 300)}",
                          where=where, line=line) from exc
    finally:
        running(None)
        view.finish()
    if result.image_id is None:
        raise view.failure(result.error, where, line)
    return Outcome(result.image_id, view.progress.stage_seconds())

