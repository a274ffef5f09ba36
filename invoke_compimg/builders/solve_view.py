"""BuildKit's progress in the user's terms: `[stage i/n] INSTRUCTION` steps mapped back to the
user's instruction and line (through `lowering.Step`), and a failed solve as one line at the
user's line (`step_failed`).

BuildKit names each step `[stage i/n] INSTRUCTION`, counting only the instructions that
make a build step (FROM, RUN, COPY, ADD, WORKDIR); `Step.source` of the lowered stage
then gives the user's own instruction and line, for progress and for errors.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..dockerfile.lowering import CONTEXT_PREFIX, keyword
from ..dockerfile.model import PLATFORM_ARGS, Arg, Copy, Env, From, Instruction, Run
from ..engine.buildkit import Progress, ProgressEvent, StatusResponse, StepName, parse_name
from ..errors import EngineError, one_line
from ..names import normalise_ref
from ..progress import QUIET
from .base import foreign_binary, step_failed

if TYPE_CHECKING:
    from ..dockerfile.lowering import Lowered, Step
    from ..progress import Reporter


# Seconds with no progress, steps ready to start and none running before a solve says that it
# waits (for another build's run of the same steps: BuildKit shows those only to that build).
WAIT_NOTICE = 3.0

# Instructions that become a BuildKit step (and so count in `[stage i/n]`).
_STEP_KEYWORDS = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})
_PARSE_ERROR_LINE = re.compile(r"(?:dockerfile parse error )?line (\d+): ")
_QUOTED = re.compile(r'"([^"\s]+)"')  # a value an engine message quotes
_WORD_PARTS = re.compile(r"[/:=,]")  # an argument's parts a frontend message may quote alone (`80/tcpp`: `tcpp`)
_UNKNOWN_FLAG = re.compile(r"^Unknown flag: ([\w-]+)$")
# Flags of our parser (the newest Dockerfile syntax) that an older built-in frontend lacks: the
# Dockerfile version and the BuildKit release whose built-in frontend first has them.
NEWER_FLAGS = {("COPY", "link"): ("1.4", "0.10"), ("ADD", "link"): ("1.4", "0.10")}
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


# What makes a stage's step differ per platform in a solve for several: a TARGET* arg read.
_TARGET_ARGS = frozenset(name for name in PLATFORM_ARGS if name.startswith("TARGET"))
_TARGET_REF = re.compile(r"\$\{?(?:" + "|".join(sorted(_TARGET_ARGS)) + r")\b")
_ON_BUILD_PLATFORM = frozenset({"$BUILDPLATFORM", "${BUILDPLATFORM}"})


def shared_steps(lines: Sequence[Step]) -> int:
    """How many of a stage's first counted steps are, for certain, one vertex for every
    platform of a solve for several: the stage starts `FROM --platform=$BUILDPLATFORM` an
    image, and up to the step nothing reads a TARGET* arg (a RUN after `ARG TARGETARCH` has
    it in its environment) or another stage or image. BuildKit announces a platform's
    vertexes as it loads that platform, so a step they share can start before the others'
    are known, and what it feeds then names one platform only."""
    count = 0
    target_in_scope = False
    for line in lines:
        source = line.source
        if isinstance(source, From):
            if source.stage or source.platform not in _ON_BUILD_PLATFORM or _TARGET_REF.search(source.written):
                return 0
        elif isinstance(source, (Arg, Env)):
            names = set(source.names) if isinstance(source, Arg) else {key for key, _ in source.pairs}
            target_in_scope = target_in_scope or bool(names & _TARGET_ARGS) or bool(_TARGET_REF.search(source.value))
        elif (isinstance(source, Run) and target_in_scope) or _TARGET_REF.search(source.text) \
                or _reads_elsewhere(source):
            return count
        if _is_step(line):
            count += 1
    return count


def _reads_elsewhere(source: Instruction) -> bool:
    """Does a COPY/ADD or a RUN mount read another stage or an image (`--from`)?"""
    origins = ([g.origin for g in source.groups] if isinstance(source, Copy)
               else [m.origin for m in source.mounts] if isinstance(source, Run) else [])
    return any(o.kind in ("stage", "image") for o in origins)


def plain_paths(text: str) -> str:
    """An engine message with our `ctx/` folder taken out of its paths."""
    return _PREFIXED_PATH.sub(lambda m: "/" if m.group(0).startswith("/") else "", text)


class SolveView:
    """BuildKit progress -> reporter events, in the user's words.

    A stage built inside the solve (not the target) is shown finished as soon as its last step
    is, not when the whole solve is; `conclude` shows the rest after a solve that succeeded.
    A solve that waits for another build (BuildKit runs a step shared by two builds once, and
    shows it only to one) says so, once (`WAIT_NOTICE`)."""

    def __init__(self, target: str, lowered: Lowered, reporter: Reporter | None, *,
                 platforms: Sequence[str] = (), host: str = "linux/amd64") -> None:
        self.target = target
        self.lowered = lowered
        self.reporter = reporter if reporter is not None else QUIET  # None: show nothing
        self.platforms = tuple(platforms)  # what the build is for (empty: the host's own)
        self.host = host  # the platform the steps run on
        self.progress = Progress()
        self.steps = {stage: [s for s in steps if _is_step(s)] for stage, steps in lowered.stages.items()}
        # per stage, how many first steps every platform shares (a solve for several)
        self.shared = {stage: shared_steps(lines) for stage, lines in lowered.stages.items()} if platforms[1:] else {}
        self.titles: dict[str, tuple[str, str]] = {}  # vertex digest -> (stage, title)
        self.finished: dict[str, str] = {}  # stages built inside the solve, shown finished -> outcome
        self._ran: set[str] = set()  # stages with a step that ran (not from the cache)
        self._shown_done: set[str] = set()  # vertexes shown done or cached
        self._lock = threading.Lock()  # `progress` is fed on the solve's thread and read by the watcher
        self._last_status = time.monotonic()
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()

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
        return self._title(event.vertex, event.name)

    def _title(self, digest: str, name: str) -> tuple[str, str] | None:
        if digest in self.titles:
            return self.titles[digest]
        step = parse_name(name)
        if step.stage == "internal" or (step.index is None and step.stage is None
                                        and not name.startswith("exporting")):
            return None  # context transfer, metadata: BuildKit's own bookkeeping
        stage, source = self.source(step)
        if source is not None:
            shared = step.index is not None and step.index <= self.shared.get(stage, 0)
            platform = self._built_for(digest, step) if len(self.platforms) > 1 and not shared else None
            label = f"{platform} {stage}" if platform else stage
            text = f"[{label} {step.index}/{step.total}] {one_line(source.source.text, 200)}"
        else:
            text = plain_paths(name)
        self.titles[digest] = (stage, text)
        return stage, text

    def _built_for(self, digest: str, step: StepName) -> str | None:
        """The platform a step of a solve for several is built for, as buildx names it: the one
        platform whose result it ends up in (None when it serves several: a step they share).
        BuildKit's name says where it runs, which is the build platform for every platform's
        step of a `FROM --platform=$BUILDPLATFORM` stage; what it feeds says whose it is."""
        with self._lock:
            vertexes = dict(self.progress.vertexes)
        consumers: dict[str, list[str]] = {}
        for vertex in vertexes.values():
            for given in vertex.inputs:
                consumers.setdefault(given, []).append(vertex.digest)
        served: set[str] = set()
        seen: set[str] = set()
        todo = [digest]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            after = [c for c in consumers.get(current, []) if parse_name(vertexes[c].name).platform]
            if after:
                todo += after
            elif current in vertexes or current == digest:
                own = parse_name(vertexes[current].name).platform if current in vertexes else step.platform
                if own:
                    served.add(own)
        return served.pop() if len(served) == 1 else None

    def feed(self, status: StatusResponse) -> None:
        with self._lock:
            events = self.progress.feed(status)
            self._last_status = time.monotonic()
        if self._watcher is None and self.reporter is not QUIET:
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="compimg-solve-watch")
            self._watcher.start()
        for event in events:
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
            self._shown_done.add(event.vertex)
            if event.kind == "done":
                self._ran.add(stage)
            if event.step.index is not None and event.step.index == event.step.total and self._last_steps_done(stage):
                self._stage_done(stage)  # a stage's steps are a chain: its last one done (each platform's), it is done
        elif event.kind == "warning":
            self.reporter.warning(f"[{stage}] {event.text}")

    def _last_steps_done(self, stage: str) -> bool:
        """Has the last step of `stage` been shown done for every platform the solve builds it
        for (one vertex each)? Shown, not merged: one status can finish them all, and its
        events are shown one by one."""
        with self._lock:
            vertexes = list(self.progress.vertexes.values())
        return all(vertex.digest in self._shown_done for vertex in vertexes
                   if (step := parse_name(vertex.name)).index is not None and step.index == step.total
                   and self.source(step)[0] == stage)

    def _stage_done(self, stage: str, outcome: str | None = None) -> None:
        """A stage built inside this solve is done: shown so now (the target is done when its
        image is, which the run says)."""
        if stage == self.target or stage in self.finished or stage not in self.steps:
            return
        outcome = self.finished[stage] = outcome or ("built" if stage in self._ran else "cached")
        with self._lock:
            seconds = self.progress.stage_seconds().get(stage, 0.0)
        self.reporter.stage_finished(stage, "", seconds, outcome)

    def finish(self) -> None:
        """The solve ended (either way): what output is still held, and no more watching."""
        self.stop_watching()
        with self._lock:
            events = self.progress.finish()
        for event in events:
            self.show(event)

    def conclude(self) -> dict[str, str]:
        """After a solve that succeeded: the stages built inside it that were not shown finished
        yet are shown now (a last step BuildKit shared with another stage's name, say);
        {stage: "built" | "cached" | "shared"} for every stage built inside it: "shared" when
        steps of it never started here, as another build ran them for both."""
        with self._lock:
            seconds = self.progress.stage_seconds()
            unseen = {digest: v.name for digest, v in self.progress.vertexes.items()
                      if v.started is None and not v.cached and not v.error}
        shared = {found[0] for digest, name in unseen.items() if (found := self._title(digest, name)) is not None}
        for stage in seconds:
            self._stage_done(stage, "shared" if stage in shared else None)
        return dict(self.finished)

    # --- a solve that waits for another build ---------------------------------------------
    def stop_watching(self) -> None:
        """No notice of waiting from now on: the solve ended, a Ctrl-C included (in a process
        that goes on, a watcher left would say a cancelled build waits)."""
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(0.5):
            with self._lock:
                quiet = time.monotonic() - self._last_status
                ready = self._ready_steps() if quiet >= WAIT_NOTICE else []
            titles = [found for digest, name in ready if (found := self._title(digest, name)) is not None]
            if titles:
                stage, text = titles[0]
                self.reporter.note(f"waiting for another build on this engine: it runs the same steps (from {text} "
                                   "on), which BuildKit runs once for both and shows only there", stage)
                return

    def _ready_steps(self) -> list[tuple[str, str]]:
        """(digest, name) of the steps that could start and have not, when none is running;
        call with the lock held. BuildKit starts a ready step at once unless another build
        is running it (or the steps it waits on) for both."""
        vertexes = self.progress.vertexes

        def done(digest: str) -> bool:
            vertex = vertexes.get(digest)
            return vertex is not None and (vertex.cached or vertex.completed is not None)

        if any(v.started is not None and v.completed is None and not v.cached for v in vertexes.values()):
            return []
        return [(v.digest, v.name) for v in vertexes.values()
                if v.started is None and not v.cached and not v.error and all(done(i) for i in v.inputs)]

    def failure(self, error: str | None, where: str, fallback_line: int) -> EngineError:
        """The failed step at the user's line. A frontend error names a line of the file we
        sent: it is mapped to the user's."""
        parse_error = _PARSE_ERROR_LINE.search(error or "")
        if parse_error and int(parse_error.group(1)) in self.lowered.lines:
            sent = self.lowered.lines[int(parse_error.group(1))]
            stage = next((name for name, steps in self.lowered.stages.items() if sent in steps), self.target)
            message = _PARSE_ERROR_LINE.sub("", plain_paths(reason(error or "")))
            newer = _newer_flag(message, sent.source)
            if newer is not None:
                return EngineError(newer, where=where, line=sent.source.line, stage=stage)
            return step_failed(stage, message, where=where, line=sent.source.line, instruction=sent.source.text,
                               advice="fix that line")
        for vertex in self.progress.failed():
            step = parse_name(vertex.name)
            message = plain_paths(reason(vertex.error or error or "failed"))
            if step.stage == "internal":
                found = self._base_image_failure(step, message, where)
                if found is not None:
                    return found
                continue
            stage, source = self.source(step)
            if source is not None:
                foreign = foreign_binary(self.progress.lines.get(vertex.digest, []), self.platforms, self.host)
                return step_failed(stage, foreign or message, where=where, line=source.source.line,
                                   instruction=source.source.text)
        message = plain_paths(reason(error or "the solve ended without an image"))
        # The failed vertex's last status can be lost when the solve ends (seen on a busy engine):
        # the executor's message still names the command, which names the step.
        ran = _EXECUTOR_FAILED.search(error or "")
        ran_step = self._run_step(ran.group(1)) if ran else None
        if ran_step is not None:
            stage, run = ran_step
            return step_failed(stage, message, where=where, line=run.line, instruction=run.text)
        quoted = self._quoted_instruction(message)
        if quoted is not None:
            stage, instruction = quoted
            return step_failed(stage, message, where=where, line=instruction.line, instruction=instruction.text)
        return step_failed(self.target, message, where=where, line=fallback_line)

    def _quoted_instruction(self, message: str) -> tuple[str, Instruction] | None:
        """The instruction a message without a location is about: the one instruction of the
        solve's stages with the value the message quotes among its arguments (the frontend's
        `Invalid containerPort: abc` of `EXPOSE abc`, `Invalid proto: tcpp` of `EXPOSE 80/tcpp`;
        the `Get "http://host/x"` of `ADD http://host/x /x`). None unless exactly one has it."""
        values = set(_QUOTED.findall(message))
        tail = message.rsplit(": ", 1)[-1].strip()
        if ": " in message and tail and not any(c.isspace() for c in tail):
            values.add(tail)
        if not values:
            return None
        found: dict[Instruction, str] = {}
        for stage, steps in self.lowered.stages.items():
            for step in steps:
                words = step.source.value.split() + step.text.split()[1:]
                parts = {part for word in words for part in (word, *_WORD_PARTS.split(word))}
                if values & parts:
                    found.setdefault(step.source, stage)
        if len(found) != 1:
            return None
        instruction, stage = next(iter(found.items()))
        return stage, instruction

    def _run_step(self, command: str) -> tuple[str, Run] | None:
        """The stage and RUN instruction whose command the executor ran (`/bin/sh -c CMD`)."""
        for stage, steps in self.lowered.stages.items():
            for step in steps:
                if isinstance(step.source, Run) and command.endswith(" ".join(step.source.command.split())):
                    return stage, step.source
        return None

    def _base_image_failure(self, step: StepName, message: str, where: str) -> EngineError | None:
        """`[internal] load metadata for docker.io/library/x:y` failed: the stage whose FROM
        names that image, at its line (not the target's). For another platform than the one
        the steps run on (`--platform`, or the FROM's own), say that no image of it is here."""
        text = step.text
        if not text.startswith("load metadata for "):
            return None
        wanted = normalise_ref(text[len("load metadata for "):])
        for stage, steps in self.lowered.stages.items():
            base = steps[0].source if steps else None
            if isinstance(base, From) and not base.stage and normalise_ref(base.image) == wanted:
                platform = step.platform or self._from_platform(base)
                advice = "check the image name and tag"
                if platform and platform != self.host:
                    advice = (f"no {platform} image of it is on the engine, and BuildKit could not fetch "
                              "one; pull it for that platform, or run this stage on the build platform "
                              "(FROM --platform=$BUILDPLATFORM ...)")
                return step_failed(stage, message, where=where, line=base.line, instruction=base.text,
                                   advice=advice)
        return None

    def _from_platform(self, base: From) -> str | None:
        """The platform a FROM's image is for: its own `--platform=` (BuildKit's platform ARGs
        filled in), else the build's; None when that cannot be known here (another ARG)."""
        target = self.platforms[0] if self.platforms else self.host
        written = base.platform
        if written is None:
            return target
        value = written
        for name, platform in (("BUILDPLATFORM", self.host), ("TARGETPLATFORM", target)):
            value = value.replace("${" + name + "}", platform).replace("$" + name, platform)
        return None if "$" in value else value


def _newer_flag(message: str, instruction: Instruction) -> str | None:
    """`Unknown flag: link` of `COPY --link`: the frontend that read the file predates the flag
    (this engine's built-in Dockerfile 1.2 has no --link). What to do, in one line, or None."""
    unknown = _UNKNOWN_FLAG.match(message)
    newer = NEWER_FLAGS.get((instruction.keyword, unknown.group(1))) if unknown else None
    if unknown is None or newer is None:
        return None
    flag = f"{instruction.keyword} --{unknown.group(1)}"
    version, buildkit = newer
    return (f"{flag} needs Dockerfile {version} (BuildKit {buildkit}+), and the Dockerfile frontend built into "
            f"this BuildKit is older (Docker 20.10's is 1.2): drop --{unknown.group(1)}, or add a "
            f"'# syntax=docker/dockerfile:{version}' line at the top of the file where the engine can pull that image")


def reason(text: str) -> str:
    """BuildKit wraps the cause in its own layers; keep the part a user acts on."""
    for marker in ("failed to solve with frontend dockerfile.v0: ", "failed to solve: ",
                   "failed to create LLB definition: "):
        text = text.replace(marker, "")
    return text.strip()
