"""The classic builder: one build request per stage, other stages by exact image ID.

Docker's and Podman's classic `/build` stream text lines; `Step 2/3 : ...` (Podman:
`STEP 2/3: ...`) says which line of the lowered Dockerfile runs, and `lowering.Step`
maps it back to the user's instruction, so errors and progress quote the user's file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..building import context
from ..dockerfile.lowering import (
    CONTEXT_PREFIX,
    PLACEHOLDER_RE,
    Lowered,
    Step,
    fill_placeholders,
    keyword,
    per_stage,
    writes_files,
)
from ..dockerfile.model import Instruction, Stage, buildkit_only
from ..engine import classic as classic_api
from ..engine import images
from ..engine.classic import BuildEvent
from ..errors import EngineError, UserError, one_line
from ..progress import Reporter, clean_lines
from .base import Builder, Plan, Sent, Unit, foreign_binary, step_failed

if TYPE_CHECKING:
    from ..building.specs import OutputSpec

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


class StepStream:
    """Turns one stage's classic build stream into reporter events. Public so that its
    mapping of the engine's step lines back to the user's instructions is tested alone."""

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


class ClassicBuilder(Builder):
    """One build request per stage; the stages it reads by exact image ID."""

    name = "classic"

    def units(self, needed: Sequence[Stage], targets: Sequence[str]) -> list[Unit]:
        return [self.unit_for(stage) for stage in needed]

    def unit_for(self, stage: Stage) -> Unit:
        return Unit(stage.name, (stage,), stage.depends_on)

    def check(self, stages: Sequence[Stage]) -> None:
        if len(self.settings.platforms) > 1:
            raise UserError(f"--platform {','.join(self.settings.platforms)}: the classic builder builds one "
                            "platform at a time; build each, or use BuildKit with -o DIR")
        super().check(stages)

    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        """Also the platform ARGs a stage declares: BuildKit gives them values itself, the
        classic builder does not."""
        args = super().args_for(stages)
        declared = {name for stage in stages for name in stage.args} | set(self.graph.global_arg_names)
        values = self.graph.platforms.args()
        args.update({name: values[name] for name in declared & set(values) if name not in args})
        return args

    def refuses(self, stage: Stage, instruction: Instruction) -> str | None:
        need = buildkit_only(instruction)
        if need:
            return (f"{need} needs BuildKit, and this build uses the classic builder ({self.engine.kind.name}); "
                    "build with --builder buildkit")
        return None

    def plan(self, unit: Unit, known: Mapping[str, str]) -> Plan:
        stage = unit.stage
        ids = {name: self._stage_id(stage, name, known) for name in stage.depends_on}
        # Heredoc files are sent beside the user's files, which then go under `ctx/`.
        triggers = self.external_triggers(stage)
        prefix = CONTEXT_PREFIX if writes_files([stage]) and not triggers else ""
        lowered = per_stage(self.graph, stage.name, context_prefix=prefix, build_args=self.args_for(unit.stages),
                            image_config=self.image_config)
        return Plan(fill_placeholders(lowered.text, ids), lowered, self.context_paths(unit), self.images_read(unit),
                    stage_ids=ids, context_prefix=prefix)

    def _stage_id(self, stage: Stage, name: str, known: Mapping[str, str]) -> str:
        """The image of stage `name` that `stage` reads: built in this run, else earlier in this
        process, else the one its local name holds."""
        found = known.get(name) or self.project.latest(name, self.name) or images.image_id_of(
            self.engine, self.project.local_ref(name))
        if found is None:
            task = self.graph.stage(name).task_name
            raise UserError(f"stage '{stage.name}' needs stage '{name}', which has not been "
                            f"built; run `{self.settings.task('stage.' + task)}` or "
                            f"`{self.settings.task('build')}` first", where=self.where, line=stage.line)
        return found

    def send(self, unit: Unit, plan: Plan, args: Mapping[str, str], output: OutputSpec | None = None,
             names: Sequence[str] = ()) -> Sent:  # (the SDK's build takes one tag: `names` are tagged afterwards)
        assert output is None, "the classic builder exports no files"
        stage = unit.stage
        stream = StepStream(stage.name, plan.lowered, self.reporter)

        def on_event(event: BuildEvent) -> None:
            if event.kind == "error":
                stream.errors.append(event.text.strip())
            else:
                stream.log(event.text)

        with self.reading_context(stage):
            archive = context.archive(str(self.project.context), plan.text, plan.paths, prefix=plan.context_prefix,
                                      files=plan.lowered.files, files_time=self.written_ns() / 1e9)
        try:
            with self.engine.errors(f"stage '{stage.name}'", where=self.where, line=stage.line):
                cache_from = images.usable_cache_sources(self.engine, self.settings.cache_from,
                                                         lambda line: stream.log(line + "\n"))
                image_id = classic_api.build(
                    self.engine, archive, dockerfile=context.DOCKERFILE_IN_CONTEXT, build_args=args,
                    no_cache=self.settings.no_cache,
                    network=network_for(self.settings.network, self.engine.kind.podman), cache_from=cache_from,
                    tag=self.project.local_ref(stage.name), on_event=on_event,
                    platform=self.settings.platforms[0] if self.settings.platforms else None)
        finally:
            stream.close()
            archive.close()
        if stream.errors or image_id is None:
            raise self._failure(stage, stream, plan.stage_ids)
        stream.finish_step()
        return Sent(image_id)

    def _failure(self, stage: Stage, stream: StepStream, ids: Mapping[str, str]) -> EngineError:
        """The failed step at the user's line, with stage names where the engine said image IDs."""
        at, instruction = stage.line, None
        if stream.sent is not None:
            source = stream.sent.source
            at = source.line
            instruction = stream.sent.text if "ONBUILD trigger" in stream.sent.text else source.text
        reason = stream.errors[-1] if stream.errors else "the engine's stream ended without an image ID"
        for name, image_id in ids.items():
            reason = reason.replace(image_id, f"stage '{name}'").replace(image_id.split(":")[-1], name)
        reason = foreign_binary(stream.tail, self.settings.platforms, self.engine.kind.platform) or reason
        return step_failed(stage.name, reason, where=self.where, line=at, instruction=instruction)

    def cancel(self) -> str:
        if self.engine.kind.podman:
            return ("Podman has no API to cancel a build, so the step it is running finishes "
                    "on its own and nothing is tagged; temporary containers and folders of this run were removed")
        # Docker cancels a classic build when its connection closes, which leaving the process does.
        return super().cancel()
