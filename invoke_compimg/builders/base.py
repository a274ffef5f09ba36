"""What every builder is: the units it makes of a build, what it refuses, the plan of one
request, and sending it. A run (`run.BuildRun`) knows builders only through this interface;
`builders.choose` is the one place that picks one.

A unit is what one build request makes: a stage with the classic builder (other stages by
image ID), a requested target with BuildKit (one solve of every stage it needs).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any, ClassVar

from ..building import context
from ..dockerfile.model import PREDEFINED_ARGS, Instruction, Stage
from ..dockerfile.parse import onbuild_sources
from ..errors import EngineError, UserError, one_line
from ..records import record

if TYPE_CHECKING:
    from ..building.project import Project
    from ..building.reuse import ExternalImages
    from ..building.settings import Settings
    from ..building.specs import OutputSpec
    from ..dockerfile.lowering import Lowered
    from ..dockerfile.model import Graph
    from ..engine.client import Engine
    from ..progress import Reporter


@record
class Unit:
    name: str  # the stage it makes an image of
    stages: tuple[Stage, ...]  # the stages one request builds (classic: just that one)
    needs: tuple[str, ...]  # units that must exist first (classic: the stages it reads)

    @property
    def stage(self) -> Stage:
        return self.stages[-1]


@record
class Plan:
    """What one request sends."""

    text: str  # the Dockerfile sent (classic: with the stage IDs filled in)
    lowered: Lowered
    paths: list[str]  # context paths sent
    images: tuple[str, ...]  # external images read
    stage_ids: Mapping[str, str] = field(default_factory=dict)  # classic: the image IDs of the stages it reads
    context_prefix: str = ""  # classic: the folder the context's files go under, beside heredoc files


@record
class Sent:
    image_id: str
    stage_seconds: Mapping[str, float] = field(default_factory=dict)  # stages built inside the request
    stage_outcomes: Mapping[str, str] = field(default_factory=dict)  # of those: "built" or "cached"
    names: tuple[str, ...] = ()  # of the `names` asked for, those the image got as it was stored


def step_failed(stage: str, message: str, *, where: str, line: int, instruction: str | None = None,
                advice: str = "") -> EngineError:
    """The one wording of a failed build step, whatever builder ran it:
    `Dockerfile:LINE: stage 'x' failed at INSTRUCTION: message[; advice]`."""
    at = f" at {one_line(instruction)}" if instruction else ""
    return EngineError(f"stage '{stage}' failed{at}: {one_line(message, 300)}" + (f"; {advice}" if advice else ""),
                       where=where, line=line, stage=stage)


def foreign_binary(output: Sequence[str], platforms: Sequence[str], host: str) -> str | None:
    """The message for a step that failed because its image's programs are for another CPU
    than the one running them (`exec format error` in its last output lines), or None."""
    if not any("exec format error" in line for line in output[-10:]):
        return None
    target = platforms[0] if platforms else "another platform"
    arch = target.split("/")[1] if "/" in target else "ARCH"
    return (f"its image is for {target} and {host} cannot run it (exec format error: no emulator for it is "
            f"installed); install one (docker run --privileged --rm tonistiigi/binfmt --install {arch}), or run "
            "this stage on the build platform (FROM --platform=$BUILDPLATFORM ...)")


class Builder(ABC):
    """One way of building: how a build splits into requests, and how one is sent."""

    name: ClassVar[str]  # as the table and the reuse records say it

    def __init__(self, engine: Engine, project: Project, graph: Graph, settings: Settings,
                 reporter: Reporter, images: ExternalImages) -> None:
        self.engine = engine
        self.project = project
        self.graph = graph
        self.settings = settings
        self.reporter = reporter
        self.images = images
        self.where = str(project.dockerfile)

    # --- what to build -------------------------------------------------------------------
    @abstractmethod
    def units(self, needed: Sequence[Stage], targets: Sequence[str]) -> list[Unit]:
        """The requests that build `targets` (and the tagged stages among `needed`)."""

    @abstractmethod
    def unit_for(self, stage: Stage) -> Unit:
        """The one request that builds `stage` alone (`assemble`, a stage's own task)."""

    @property
    def jobs(self) -> int:
        """Requests sent at the same time."""
        return self.settings.jobs

    def check(self, stages: Sequence[Stage]) -> None:
        """Refuse, before any request, what this builder cannot do: one line at its line."""
        for stage in stages:
            for instruction in stage.instructions:
                refusal = self.refuses(stage, instruction)
                if refusal:
                    raise UserError(refusal, where=self.where, line=instruction.line)

    @abstractmethod
    def refuses(self, stage: Stage, instruction: Instruction) -> str | None:
        """Why this builder cannot run `instruction` of `stage` (what to do included), or None."""

    # --- one request ---------------------------------------------------------------------
    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        """The build args these stages consume: their own ARGs, the global ARGs, and
        Docker's predefined proxy args. Others are not sent (Docker would warn)."""
        names = set(self.graph.global_arg_names) | PREDEFINED_ARGS
        for stage in stages:
            names.update(stage.args)
        return {k: v for k, v in self.settings.build_args.items() if k in names}

    @abstractmethod
    def plan(self, unit: Unit, known: Mapping[str, str]) -> Plan:
        """What one request sends; `known` has the image IDs of units built in this run."""

    @abstractmethod
    def send(self, unit: Unit, plan: Plan, args: Mapping[str, str], output: OutputSpec | None = None,
             names: Sequence[str] = ()) -> Sent:
        """Send one request and follow it to its image (or, with `output`, to files written
        there, and no image); a failure is `step_failed`'s line. `names`: more names for the
        image, which a builder that can gives it as it is stored (`Sent.names`), one
        request fewer each than tagging it afterwards."""

    @property
    def stores_images(self) -> bool:
        """Does a request leave an image in an image store that later runs find by name (the
        engine's)? Reuse, tags and pushes by the engine rest on it."""
        return True

    @property
    def exports(self) -> bool:
        """Can `send` write an `output` (files instead of an image)?"""
        return False

    def extract(self, image_ref: str, path: str, dest: str) -> list[str] | None:
        """Copy `path` of the image `image_ref` into the folder `dest` (merged in, as `docker cp`
        does) and return the names written there; None when this builder has no way of its
        own (the caller then copies out of a container)."""
        return None

    def prepare(self) -> None:  # noqa: B027 - most builders need nothing ahead
        """A request will surely be sent (an output, a service): get ready for it meanwhile."""

    def close(self) -> None:  # noqa: B027 - most builders hold nothing
        """After the run: release what the builder holds (a BuildKit session)."""

    def cancel(self) -> str:
        """Ctrl-C: cancel what the engine builds for us; the line to show."""
        return "running builds were cancelled on the engine; temporary containers and folders of this run were removed"

    # --- shared by the builders ---------------------------------------------------------------
    def external_triggers(self, stage: Stage) -> tuple[str, ...]:
        """ONBUILD triggers of the stage's external base image (they run in the stage)."""
        return () if stage.base_stage or stage.base == "scratch" else self.images.triggers(self.engine, stage.base)

    def image_config(self, ref: str) -> Mapping[str, Any] | None:
        """An external image's config: its Env and Shell are what heredocs are lowered with."""
        return (self.images.inspect(self.engine, ref) or {}).get("Config")

    def context_sources(self, unit: Unit) -> list[str]:
        """The context sources the unit's stages name, as written: their own COPY/ADD/bind
        mounts, and those of the ONBUILD triggers of their base images, which run in them
        (`FROM golang:onbuild`)."""
        sources: list[str] = []
        for stage in unit.stages:
            triggers = self.external_triggers(stage)
            sources += [*stage.context_sources, *(onbuild_sources(triggers) if triggers else [])]
        return sources

    def context_paths(self, unit: Unit) -> list[str]:
        """Context paths the unit reads (see `context_sources`)."""
        with self.reading_context(unit.stage):
            return context.files_read(str(self.project.context), self.context_sources(unit))

    def written_ns(self) -> int:
        """When the Dockerfile was last written (ns; 0 if unknown): the time of the files its
        heredocs make, as they were written then (what BuildKit's own heredocs get is the
        build's time; this one stays the same while the file does, so the layer does too)."""
        try:
            return self.project.dockerfile.stat().st_mtime_ns
        except OSError:
            return 0

    def reading_context(self, stage: Stage) -> contextlib.AbstractContextManager[None]:
        """The file system's errors while reading the build context, as one line."""
        return context.reading(f"stage '{stage.name}'", self.project.context, where=self.where, line=stage.line)

    @staticmethod
    def images_read(unit: Unit) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ref for s in unit.stages for ref in s.images))
