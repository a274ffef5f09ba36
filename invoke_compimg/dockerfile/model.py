"""The stage graph: an immutable, typed model of a compilation-image Dockerfile.

Pure data and graph operations, after BuildKit's `instructions` package: each instruction
keeps the user's text and line, and the instructions that refer to other stages (FROM,
COPY/ADD, RUN --mount, ONBUILD) are typed, with every source tagged by where it comes
from. Lowering (`lowering.py`) and the formats (`render.py`) read this model; nothing here
knows of Invoke, the engine or scheduling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import field
from functools import cached_property

from ..records import record

# Docker's own rule for `FROM ... AS name` (compared case-insensitively).
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
# Longest name that still fits in an image tag (tags are at most 128 characters).
STAGE_NAME_MAX = 128
# Build args every Docker build accepts without an ARG (they never reach the image).
PREDEFINED_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})


@record
class Platform:
    """An OS/architecture[/variant], as BuildKit's platform build args spell it."""

    os: str = "linux"
    arch: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/arm64/v8` -> Platform("linux", "arm64", "v8"); ValueError if malformed."""
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts):
            raise ValueError(f"platform {text!r} is not os/arch[/variant]")
        return cls(parts[0].lower(), parts[1].lower(), parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.arch, self.variant) if p)


@record
class Platforms:
    """The platform images are built for (`target`) and the one the build runs on
    (`build`): the values of BuildKit's automatic platform ARGs. Both default to
    linux/amd64, this engine's worker; `--platform` would set `target`."""

    target: Platform = Platform()
    build: Platform = Platform()

    def args(self) -> dict[str, str]:
        """BUILDPLATFORM, BUILDOS, ... TARGETVARIANT, as every BuildKit build defines them."""
        values: dict[str, str] = {}
        for prefix, platform in (("BUILD", self.build), ("TARGET", self.target)):
            values |= {f"{prefix}PLATFORM": str(platform), f"{prefix}OS": platform.os,
                       f"{prefix}ARCH": platform.arch, f"{prefix}VARIANT": platform.variant}
        return values


PLATFORM_ARGS = frozenset(Platforms().args())


@record
class Heredoc:
    """One here-document (Dockerfile 1.4): `<<EOF` on an instruction's line, its body
    on the lines after it, up to the delimiter line."""

    name: str  # the delimiter, quotes removed
    content: str  # the body as written, each line with its newline
    expand: bool  # delimiter not quoted: BuildKit expands variables in a COPY/ADD body
    chomp: bool  # `<<-`: leading tabs are stripped from each line
    fd: int = 0  # `3<<EOF`

    @property
    def body(self) -> str:
        """The content with leading tabs stripped for `<<-`."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


def _value(pairs: tuple[tuple[str, str | None], ...] | tuple[tuple[str, str], ...], name: str) -> str | None:
    """The value of the first `name` in (key, value) pairs, as Docker reads flags."""
    return next((value for key, value in pairs if key == name), None)


def task_name_for(stage_name: str) -> str:
    """The Invoke task name of a stage: `.` separates collections and Invoke turns `_`
    into `-`, so both become `-`; colliding stage names are rejected by the parser."""
    return re.sub(r"[._]", "-", stage_name)


@record
class Origin:
    """Where a COPY/ADD source or a RUN mount reads from."""

    # "context", "stage" (of this file), "image", "url" (ADD), "none" (cache mounts...); inside
    # the parser also "ref": a `--from` value not yet known to name a stage or an image.
    kind: str
    ref: str = ""  # the stage's name, the image reference or the URL

    @property
    def stage(self) -> str | None:
        return self.ref if self.kind == "stage" else None

    @property
    def image(self) -> str | None:
        return self.ref if self.kind == "image" else None

    @property
    def is_context(self) -> bool:
        return self.kind == "context"


CONTEXT = Origin("context")
NOWHERE = Origin("none")


@record
class Instruction:
    """One Dockerfile instruction as the user wrote it (continuations joined)."""

    keyword: str  # upper case
    value: str  # the arguments as written (the first line's, for one with heredocs)
    line: int  # 1-based line where it starts
    heredocs: tuple[Heredoc, ...] = field(default=(), kw_only=True)  # bodies that follow its line

    @property
    def text(self) -> str:
        return f"{self.keyword} {self.value}"

    @property
    def stages(self) -> tuple[str, ...]:
        """Stages of this file that the instruction reads."""
        return ()


@record
class From(Instruction):
    flags: tuple[str, ...]  # `--platform=...` as written
    image: str  # the reference after ARG expansion, or the stage's name
    stage: str | None  # the earlier stage it builds on, if any
    written: str  # the reference as written (`golang:${GO}`)
    alias: str | None = None  # `AS name` as written

    @property
    def stages(self) -> tuple[str, ...]:
        return (self.stage,) if self.stage else ()

    @property
    def platform(self) -> str | None:
        """Its `--platform=` value as written (`$BUILDPLATFORM`), or None."""
        return next((flag.split("=", 1)[1] for flag in self.flags if flag.startswith("--platform=")), None)


@record
class CopyGroup:
    """Sources of one COPY that come from one origin (a seed COPY may mix several)."""

    origin: Origin
    paths: tuple[str, ...]


@record
class Copy(Instruction):
    """COPY or ADD. `groups` splits the sources by origin, in the order written."""

    flags: tuple[tuple[str, str | None], ...]  # without --from, leading `--` removed
    groups: tuple[CopyGroup, ...]
    dest: str
    json_form: bool
    inline: tuple[Heredoc, ...] = ()  # heredoc sources (`COPY <<EOF /dest`), copied after the paths

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(g.origin.stage for g in self.groups if g.origin.stage)

    def flag(self, name: str) -> str | None:
        return _value(self.flags, name)


@record
class Mount:
    """One `RUN --mount=...`: its options as written, and what it reads from."""

    type: str  # bind, cache, tmpfs, secret, ssh
    options: tuple[tuple[str, str], ...]  # key=value pairs as written (keys lower case)
    origin: Origin  # `from=` (a stage or an image), else the context (bind) or nothing

    def option(self, name: str) -> str | None:
        return _value(self.options, name)


@record
class Run(Instruction):
    mounts: tuple[Mount, ...]
    command: str  # the rest after the --flags, as written
    flags: tuple[str, ...]  # every leading --flag as written, --mount included
    json_form: bool = False  # exec form, `RUN ["a", "b"]`

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(m.origin.stage for m in self.mounts if m.origin.stage)


@record
class Arg(Instruction):
    names: tuple[str, ...]
    defaults: tuple[str | None, ...] = ()  # per name: the default as written, or None

    @property
    def pairs(self) -> tuple[tuple[str, str | None], ...]:
        return tuple(zip(self.names, self.defaults or (None,) * len(self.names), strict=True))


@record
class Env(Instruction):
    """ENV (and LABEL): key/value pairs, values as written (quotes kept)."""

    pairs: tuple[tuple[str, str], ...]


@record
class Shell(Instruction):
    shell: tuple[str, ...]


@record
class Onbuild(Instruction):
    trigger: Instruction  # the instruction that runs in stages built FROM this one

    @property
    def stages(self) -> tuple[str, ...]:
        return self.trigger.stages


@record
class StageCopy:
    """Paths that one COPY takes out of an earlier stage's image."""

    stage: str
    paths: tuple[str, ...]
    dest: str
    line: int


@record
class Stage:
    name: str  # lower case; unnamed stages are called `stage-<index>`
    index: int  # 0-based, as in `COPY --from=<index>`
    line: int  # 1-based line of its FROM (or NAME)
    named: bool  # false for a stage that got a generated name
    instructions: tuple[Instruction, ...]  # FROM first, then the rest of the stage
    # ONBUILD triggers of its base-stage chain, which run when this stage is built: the
    # stages they read are this stage's prerequisites as well.
    inherited: tuple[Onbuild, ...] = ()

    @property
    def from_(self) -> From:
        first = self.instructions[0]
        assert isinstance(first, From)
        return first

    @property
    def base(self) -> str:
        return self.from_.image

    @property
    def base_stage(self) -> bool:
        return self.from_.stage is not None

    @property
    def task_name(self) -> str:
        return task_name_for(self.name)

    @cached_property
    def depends_on(self) -> tuple[str, ...]:
        """Stages this one needs, in order of first use (its base first): FROM, COPY
        sources, RUN mounts, and the stages that inherited ONBUILD triggers read."""
        seen: dict[str, None] = {}
        # Its own ONBUILD triggers count too: the classic builder stores them with the exact
        # image ID of the stage they read, so that stage must exist first.
        for instruction in (*self.instructions, *self.inherited):
            for name in instruction.stages:
                seen.setdefault(name)
        return tuple(seen)

    @property
    def copies(self) -> tuple[StageCopy, ...]:
        return tuple(
            StageCopy(group.origin.stage, group.paths, instruction.dest, instruction.line)
            for instruction in self.instructions if isinstance(instruction, Copy)
            for group in instruction.groups if group.origin.stage
        )

    @property
    def context_sources(self) -> tuple[str, ...]:
        """Context paths its own COPY/ADD and `RUN --mount=type=bind` read."""
        sources: list[str] = []
        for instruction in self.instructions:
            if isinstance(instruction, Copy):
                sources += [p for g in instruction.groups if g.origin.is_context for p in g.paths]
            elif isinstance(instruction, Run):
                for mount in instruction.mounts:
                    if mount.type == "bind" and mount.origin.is_context:
                        sources.append(mount.option("source") or mount.option("src") or ".")
        return tuple(sources)

    @property
    def images(self) -> tuple[str, ...]:
        """Other images it reads: its base image, COPY --from=<image>, RUN mounts."""
        found: dict[str, None] = {}
        if not self.base_stage:
            found.setdefault(self.base)
        for instruction in self.instructions:
            if isinstance(instruction, Copy):
                for group in instruction.groups:
                    if group.origin.image:
                        found.setdefault(group.origin.image)
            elif isinstance(instruction, Run):
                for mount in instruction.mounts:
                    if mount.origin.image:
                        found.setdefault(mount.origin.image)
        return tuple(found)

    @property
    def args(self) -> tuple[str, ...]:
        """Build args this stage declares with its own ARG instructions."""
        return tuple(name for i in self.instructions if isinstance(i, Arg) for name in i.names)

    @property
    def mounts(self) -> tuple[Mount, ...]:
        return tuple(m for i in self.instructions if isinstance(i, Run) for m in i.mounts)


@record
class Graph:
    path: str  # the Dockerfile, as the user named it (used in messages)
    stages: tuple[Stage, ...]
    global_args: tuple[Arg, ...] = ()  # ARGs before the first FROM
    escape: str = "\\"
    syntax: str | None = None  # the `# syntax=` directive: the frontend the file asks for
    platforms: Platforms = Platforms()  # the values its platform ARGs were read with

    @cached_property
    def _by_name(self) -> dict[str, Stage]:
        return {stage.name: stage for stage in self.stages}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def global_arg_names(self) -> tuple[str, ...]:
        return tuple(name for arg in self.global_args for name in arg.names)

    def find(self, name: str) -> Stage | None:
        """The stage called `name` (case-insensitive; the task spelling `unit-tests` finds
        `unit_tests` too), or None."""
        found = self._by_name.get(name.lower())
        if found is None:
            found = self._by_task.get(task_name_for(name.lower()))
        return found

    @cached_property
    def _by_task(self) -> dict[str, Stage]:
        return {stage.task_name: stage for stage in self.stages}

    def stage(self, name: str) -> Stage:
        """The stage called `name`; KeyError if there is none."""
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        return found

    def needs(self, target: str | None = None) -> tuple[Stage, ...]:
        """The target (default: final) and every stage it needs, in build order."""
        goal = self.stage(target) if target else self.final
        wanted = {goal.name}
        # Stages only refer backwards, so one reverse sweep collects the closure.
        for stage in reversed(self.stages[: goal.index + 1]):
            if stage.name in wanted:
                wanted.update(stage.depends_on)
        return tuple(s for s in self.stages[: goal.index + 1] if s.name in wanted)

    def closest(self, name: str) -> str | None:
        """The stage name nearest to `name`, for "did you mean"."""
        return closest(name.lower(), self.names)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (small strings: stage names)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def closest(name: str, candidates: Iterable[str], limit: int = 2) -> str | None:
    """The candidate nearest to `name` within `limit` edits (the earliest on a tie), as
    BuildKit suggests; None for an exact match or nothing near."""
    best: tuple[int, str] | None = None
    for candidate in candidates:
        distance = edit_distance(name, candidate)
        if distance == 0:
            return None
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def buildkit_only(instruction: Instruction) -> str | None:
    """The BuildKit-only feature an instruction uses, if any (the classic builder refuses
    these, or silently ignores them)."""
    if isinstance(instruction, Run) and instruction.flags:  # --mount, --network, --security, --device
        return "RUN --" + instruction.flags[0][2:].partition("=")[0]
    if isinstance(instruction, Copy):
        for key, _ in instruction.flags:
            if key != "chown":  # the classic builder takes only --chown (and COPY --from)
                return f"{instruction.keyword} --{key}"
    return None


def copies_from(trigger: Onbuild) -> bool:
    """Does an ONBUILD trigger copy from another stage or an image (`COPY --from=...`)?"""
    inner = trigger.trigger
    return bool(trigger.stages) or (isinstance(inner, Copy) and any(g.origin.image for g in inner.groups))


def classic_only(stages: Iterable[Stage]) -> list[Instruction]:
    """Instructions only the classic builder runs right: an inherited ONBUILD trigger that
    copies from another stage or an image (BuildKit of Docker 20.10 resolves its `--from`
    against the wrong root), reported at the stage that runs it (its FROM)."""
    return [stage.from_ for stage in stages if any(copies_from(t) for t in stage.inherited)]
