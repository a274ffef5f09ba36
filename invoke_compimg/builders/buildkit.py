"""The BuildKit builder: one solve of every stage a target needs, through the engine's own
BuildKit (`engine.buildkit.solve`), with its progress shown in the user's terms.

BuildKit names each step `[stage i/n] INSTRUCTION`, counting only the instructions that
make a build step (FROM, RUN, COPY, ADD, WORKDIR); `Step.source` of the lowered stage
then gives the user's own instruction and line, for progress and for errors.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..building import context
from ..dockerfile.lowering import CONTEXT_PREFIX, keyword, multi_stage
from ..dockerfile.model import From, Instruction, Run, Stage, classic_only
from ..engine import buildkit as engine_buildkit
from ..engine.buildkit import Progress, ProgressEvent, StatusResponse, StepName, parse_name
from ..errors import BuildRejected, EngineError, one_line
from ..names import normalise_ref
from .base import Builder, Plan, Sent, Unit, step_failed

if TYPE_CHECKING:
    from ..dockerfile.lowering import Lowered, Step
    from ..progress import Reporter

# Instructions that become a BuildKit step (and so count in `[stage i/n]`).
_STEP_KEYWORDS = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})
_PARSE_ERROR_LINE = re.compile(r"(?:dockerfile parse error )?line (\d+): ")
_EXECUTOR_FAILED = re.compile(r"executor failed running \[(.*)\]: ", re.DOTALL)
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


class SolveView:
    """BuildKit progress -> reporter events, in the user's words."""

    def __init__(self, target: str, lowered: Lowered, reporter: Reporter) -> None:
        self.target = target
        self.lowered = lowered
        self.reporter = reporter
        self.progress = Progress()
        self.steps = {stage: [s for s in steps if _is_step(s)] for stage, steps in lowered.stages.items()}
        self.titles: dict[str, tuple[str, str]] = {}  # vertex digest -> (stage, title)

    def source(self, step: StepName) -> tuple[str, Step | None]:
        stage = step.stage if step.stage and step.stage in self.steps else self.target
        found = self.steps.get(stage, [])
        if step.index is not None and 0 < step.index <= len(found):
            candidate = found[step.index - 1]
            if keyword(candidate.text) == keyword(step.text):
                return stage, candidate
        # Counted differently than we think (a BuildKit version's own rule): match the text.
        same = [s for s in found if " ".join(s.text.split()) == " ".join(step.text.split())]
        return stage, same[0] if len(same) == 1 else None

    def title(self, event: ProgressEvent) -> tuple[str, str] | None:
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

    def feed(self, status: StatusResponse) -> None:
        for event in self.progress.feed(status):
            self.show(event)

    def show(self, event: ProgressEvent) -> None:
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
        """The failed step at the user's line. A frontend error names a line of the file we
        sent: it is mapped to the user's."""
        parse_error = _PARSE_ERROR_LINE.search(error or "")
        if parse_error and int(parse_error.group(1)) in self.lowered.lines:
            sent = self.lowered.lines[int(parse_error.group(1))]
            stage = next((name for name, steps in self.lowered.stages.items() if sent in steps), self.target)
            message = _PARSE_ERROR_LINE.sub("", plain_paths(_reason(error or "")))
            return step_failed(stage, message, where=where, line=sent.source.line, instruction=sent.source.text,
                               advice="fix that line")
        for vertex in self.progress.failed():
            step = parse_name(vertex.name)
            message = plain_paths(_reason(vertex.error or error or "failed"))
            if step.stage == "internal":
                found = self._base_image_failure(step.text, message, where)
                if found is not None:
                    return found
                continue
            stage, source = self.source(step)
            if source is not None:
                return step_failed(stage, message, where=where, line=source.source.line,
                                   instruction=source.source.text)
        message = plain_paths(_reason(error or "the solve ended without an image"))
        # The failed vertex's last status can be lost when the solve ends (seen on a busy engine):
        # the executor's message still names the command, which names the step.
        ran = _EXECUTOR_FAILED.search(error or "")
        ran_step = self._run_step(ran.group(1)) if ran else None
        if ran_step is not None:
            stage, run = ran_step
            return step_failed(stage, message, where=where, line=run.line, instruction=run.text)
        return step_failed(self.target, message, where=where, line=fallback_line)

    def _run_step(self, command: str) -> tuple[str, Run] | None:
        """The stage and RUN instruction whose command the executor ran (`/bin/sh -c CMD`)."""
        for stage, steps in self.lowered.stages.items():
            for step in steps:
                if isinstance(step.source, Run) and command.endswith(" ".join(step.source.command.split())):
                    return stage, step.source
        return None

    def _base_image_failure(self, text: str, message: str, where: str) -> EngineError | None:
        """`[internal] load metadata for docker.io/library/x:y` failed: the stage whose FROM
        names that image, at its line (not the target's)."""
        if not text.startswith("load metadata for "):
            return None
        wanted = normalise_ref(text[len("load metadata for "):])
        for stage, steps in self.lowered.stages.items():
            base = steps[0].source if steps else None
            if isinstance(base, From) and not base.stage and normalise_ref(base.image) == wanted:
                return step_failed(stage, message, where=where, line=base.line, instruction=base.text,
                                   advice="check the image name and tag")
        return None


def _reason(text: str) -> str:
    """BuildKit wraps the cause in its own layers; keep the part a user acts on."""
    for marker in ("failed to solve with frontend dockerfile.v0: ", "failed to solve: ",
                   "failed to create LLB definition: "):
        text = text.replace(marker, "")
    return text.strip()


class BuildKitBuilder(Builder):
    """One solve per requested target, of every stage it needs, through the engine's own
    BuildKit (`POST /build?version=2`, no session); a tagged stage gets a solve of its own."""

    name = "buildkit"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._running: set[str] = set()  # build IDs of the solves going on

    def units(self, needed: Sequence[Stage], targets: Sequence[str]) -> list[Unit]:
        # A stage with a tag needs an image of its own: a solve of its own, after the target's,
        # whose cache then holds it (the same image, for a fraction of the time).
        graph = self.graph
        goals = list(dict.fromkeys(targets))
        tagged = [s.name for s in needed if self.settings.tags.get(s.name) and s.name not in goals]
        units = [Unit(t, graph.needs(t), ()) for t in goals]
        units += [Unit(t, graph.needs(t), tuple(g for g in goals if t in {s.name for s in graph.needs(g)}))
                  for t in tagged]
        return units

    def unit_for(self, stage: Stage) -> Unit:
        return Unit(stage.name, self.graph.needs(stage.name), ())

    def refuses(self, stage: Stage, instruction: Instruction) -> str | None:
        if instruction in classic_only([stage]):
            return ("ONBUILD with a stage reference (`COPY --from=<stage>` in a trigger) is not run correctly "
                    "by this engine's BuildKit; build with --builder classic (auto does)")
        for mount in getattr(instruction, "mounts", ()):
            if mount.type in ("secret", "ssh"):
                return (f"RUN --mount=type={mount.type} is not supported yet (it needs a BuildKit session); "
                        "pass what it needs as a build arg or a file in the context for now")
        return None

    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        args = super().args_for(stages)
        if self.settings.cache_to == "inline":
            args["BUILDKIT_INLINE_CACHE"] = "1"  # BuildKit's way of embedding cache metadata
        return args

    def plan(self, unit: Unit, known: Mapping[str, str]) -> Plan:
        # The ONBUILD triggers of an external base image read the context as the user laid
        # it out, so a unit with such triggers is sent without the `ctx/` folder.
        prefix = "" if any(self.external_triggers(s) for s in unit.stages) else CONTEXT_PREFIX
        lowered = multi_stage(self.graph, unit.stages, context_prefix=prefix, build_args=self.args_for(unit.stages),
                              image_config=self.image_config)
        return Plan(lowered.text, lowered, self.context_paths(unit), self.images_read(unit), context_prefix=prefix)

    def send(self, unit: Unit, plan: Plan, args: Mapping[str, str]) -> Sent:
        target = unit.stage
        view = SolveView(target.name, plan.lowered, self.reporter)
        build_id = f"compimg-{uuid.uuid4().hex}"
        # A solve after another of this run (`unit.needs`) reads that one's fresh results
        # from the cache even under --no-cache: they were made now, and it must be the same image.
        no_cache = self.settings.no_cache and not unit.needs
        with self.reading_context(target):
            archive = context.archive(str(self.project.context), plan.text, plan.paths, prefix=plan.context_prefix,
                                      files=plan.lowered.files)
        with self._lock:
            self._running.add(build_id)
        try:
            with self.engine.errors(f"stage '{target.name}'", where=self.where, line=target.line):
                result = engine_buildkit.solve(
                    self.engine, archive, dockerfile=context.DOCKERFILE_IN_CONTEXT, target=target.name,
                    build_args=args, no_cache=no_cache,
                    network=engine_buildkit.network_for(self.engine, self.settings.network),
                    cache_from=self.settings.cache_from, build_id=build_id, on_status=view.feed,
                    tags=[self.project.local_ref(target.name)])
        except BuildRejected as exc:
            raise step_failed(target.name, "the engine refused the build: " + plain_paths(_reason(exc.engine_message)),
                              where=self.where, line=target.line) from exc
        finally:
            with self._lock:
                self._running.discard(build_id)
            archive.close()
            view.finish()
        if result.image_id is None:
            raise view.failure(result.error, self.where, target.line)
        return Sent(result.image_id, view.progress.stage_seconds())

    def cancel(self) -> str:
        with self._lock:
            running = list(self._running)
        for build_id in running:
            with contextlib.suppress(Exception):  # the connection closing cancels it too
                engine_buildkit.cancel(self.engine, build_id)
        return super().cancel()
