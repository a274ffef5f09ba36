"""A project: one compilation-image Dockerfile, its build context, the names its images
get, and the settings a build takes. Nothing here talks to the engine or imports its SDK,
so `invoke --list` and `compimg.parse` stay quick."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .graph import Graph, Stage
from .syntax import parse_file

if TYPE_CHECKING:
    from .pipeline import StageResult


@dataclass(frozen=True)
class Settings:
    """What a build may vary; defaults come from config, CLI flags override them."""

    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> refs
    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    network: str | None = None
    push: bool = False
    jobs: int = 4  # stages built at the same time: builds run on the engine, we mostly wait



class Project:
    """One compilation-image Dockerfile and its build context."""

    def __init__(self, dockerfile: str | Path, context: str | Path, graph: Graph | None = None) -> None:
        self.dockerfile = Path(dockerfile)
        self.context = Path(context)
        self.graph = graph if graph is not None else parse_file(self.dockerfile)
        self.slug = project_slug(self.dockerfile, self.context)
        # Images built in this process, per (stage, settings that change the result).
        self._built: dict[tuple[str, tuple[tuple[str, str], ...], bool], StageResult] = {}

    @property
    def repository(self) -> str:
        """Every image name this project makes lives in this one repository."""
        return f"compimg/{self.slug}"

    def local_ref(self, stage: str) -> str:
        """The stable local name of a stage's latest image (see README, "Image names")."""
        return f"{self.repository}:{stage}"

    def inputs_ref(self, stage: str, digest: str = "") -> str:
        """The name that records which inputs a stage's image was built from (whole-stage
        skips). Stage names are lower case, so the upper-case `--I-` cannot occur in one:
        `inputs_ref(stage)` is a prefix that only that stage's records have."""
        return f"{self.repository}:{stage[:80]}--I-{digest}"

    def stage(self, name: str, *, flag: str = "stage") -> Stage:
        found = self.graph.find(name)
        if found is None:
            raise UserError(f"unknown stage '{name}' ({flag}); known stages: "
                            f"{', '.join(self.graph.names)}", where=str(self.dockerfile))
        return found


def project_slug(dockerfile: Path, context: Path) -> str:
    """`<context folder>-<8 hex of the Dockerfile's absolute path>`: readable, and two
    projects with the same folder and stage names never share images."""
    base = re.sub(r"[^a-z0-9]+", "-", context.resolve().name.lower()).strip("-") or "project"
    digest = hashlib.sha256(str(dockerfile.resolve()).encode()).hexdigest()[:8]
    return f"{base[:40]}-{digest}"


def parse_tags(values: Iterable[str], default_stage: str, project: Project) -> dict[str, tuple[str, ...]]:
    """`STAGE=REF` or `REF` (the target) -> {stage: refs}, checking stage names and refs."""
    tags: dict[str, list[str]] = {}
    for value in values:
        stage, eq, ref = value.partition("=")
        if not eq:
            stage, ref = default_stage, value
        name = project.stage(stage, flag=f"--tag {value}").name
        from docker.utils.build import match_tag  # the SDK's own rule, imported only to build

        if not match_tag(ref):
            raise UserError(f"--tag {value}: '{ref}' is not a valid image reference; "
                            "use lower-case name[:tag]")
        tags.setdefault(name, []).append(ref)
    return {k: tuple(v) for k, v in tags.items()}


def parse_build_args(values: Iterable[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not key or not eq:
            raise UserError(f"--build-arg {value}: write KEY=VALUE")
        args[key] = val
    return args
