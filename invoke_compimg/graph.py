"""The stage graph: an immutable model of a compilation-image Dockerfile.

Pure data and graph operations. It knows nothing of Invoke, the engine or scheduling,
so that the task wiring and the builder can both be driven from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

# Docker's own rule for `FROM ... AS name` (compared case-insensitively).
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
# Longest name that still fits in an image tag (tags are at most 128 characters).
STAGE_NAME_MAX = 128


def task_name_for(stage_name: str) -> str:
    """The Invoke task name of a stage: `.` separates collections and Invoke turns `_`
    into `-`, so both become `-`; colliding stage names are rejected by the parser."""
    return re.sub(r"[._]", "-", stage_name)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as Docker sees it (continuations joined)."""

    keyword: str  # upper case
    value: str  # the arguments, continuation lines joined
    line: int  # 1-based line where it starts
    # What is sent to the engine for it: stage references become placeholders, and a
    # COPY from several origins becomes one COPY per origin.
    lowered: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageCopy:
    """Paths that a `COPY` takes out of an earlier stage's image."""

    stage: str  # the source stage's name
    paths: tuple[str, ...]
    dest: str
    line: int


@dataclass(frozen=True)
class Stage:
    name: str  # lower case; unnamed stages are called `stage-<index>`
    index: int  # 0-based, as in `COPY --from=<index>`
    line: int  # 1-based line of its FROM (or NAME)
    base: str  # image reference, or a stage name when `base_stage` is true
    base_stage: bool
    named: bool  # false for a stage that got a generated name
    instructions: tuple[Instruction, ...]  # FROM first, then the rest of the stage
    copies: tuple[StageCopy, ...]
    context_sources: tuple[str, ...]  # context paths its own COPY/ADD read
    images: tuple[str, ...] = ()  # other images it reads: its base image, COPY --from=<image>

    @property
    def task_name(self) -> str:
        return task_name_for(self.name)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Stages this one needs, in order of first use (its base first)."""
        seen: list[str] = [self.base] if self.base_stage else []
        for copy in self.copies:
            if copy.stage not in seen:
                seen.append(copy.stage)
        return tuple(seen)


@dataclass(frozen=True)
class Graph:
    path: str  # the Dockerfile, as the user named it (used in messages)
    stages: tuple[Stage, ...]
    global_args: tuple[Instruction, ...] = ()  # ARGs before the first FROM
    escape: str = "\\"

    @cached_property
    def _by_name(self) -> dict[str, Stage]:
        return {stage.name: stage for stage in self.stages}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def find(self, name: str) -> Stage | None:
        return self._by_name.get(name.lower())

    def stage(self, name: str) -> Stage:
        """The stage called `name` (case-insensitive); KeyError if there is none."""
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
        return tuple(s for s in self.stages if s.name in wanted)

    def build_order(self, target: str | None = None) -> tuple[Stage, ...]:
        return self.needs(target)

    def waves(self, target: str | None = None) -> tuple[tuple[Stage, ...], ...]:
        """Groups of stages that can build at the same time, in order."""
        level: dict[str, int] = {}
        for stage in self.needs(target):
            level[stage.name] = 1 + max((level[d] for d in stage.depends_on), default=-1)
        depth = max(level.values()) + 1
        return tuple(
            tuple(s for s in self.needs(target) if level[s.name] == n) for n in range(depth)
        )

    def dependents(self, name: str) -> tuple[Stage, ...]:
        """Stages that use `name` directly."""
        return tuple(s for s in self.stages if name in s.depends_on)

    def lowered_lines(self, name: str) -> tuple[tuple[str, int], ...]:
        """(line sent to the engine, source line) for stage `name`: the global ARGs, then
        the stage's own instructions. References to other stages are `{{stage:NAME}}`
        placeholders until their image IDs are known."""
        stage = self.stage(name)
        return tuple(
            (text, instruction.line)
            for instruction in (*self.global_args, *stage.instructions)
            for text in instruction.lowered
        )

    def lowered(self, name: str) -> str:
        """The single-stage Dockerfile sent to the engine for stage `name`."""
        lines = [f"# escape={self.escape}"] if self.escape != "\\" else []
        lines += [text for text, _ in self.lowered_lines(name)]
        return "\n".join(lines) + "\n"
