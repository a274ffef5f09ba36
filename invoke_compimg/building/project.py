"""A project: one compilation-image Dockerfile, its build context, the names its images
get, and what was built for it in this process. Nothing here talks to the engine or
imports its SDK, so `invoke --list` and `compimg.parse` stay quick."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..dockerfile.model import Graph, Stage
from ..dockerfile.parse import parse_file
from ..errors import UserError

if TYPE_CHECKING:
    from ..progress import StageResult


class Project:
    """One compilation-image Dockerfile and its build context."""

    def __init__(self, dockerfile: str | Path, context: str | Path, graph: Graph | None = None) -> None:
        self.dockerfile = Path(dockerfile)
        self.context = Path(context)
        self.graph = graph if graph is not None else parse_file(self.dockerfile, context=self.context)
        self.slug = project_slug(self.dockerfile, self.context)
        # Images built in this process, keyed by what changes the result (see run.BuildRun).
        self._memo: dict[tuple[object, ...], StageResult] = {}
        self._memo_lock = threading.Lock()

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

    def recall(self, key: tuple[object, ...]) -> StageResult | None:
        """What was built in this process for `key` (unit, builder, args, ...), if anything."""
        with self._memo_lock:
            return self._memo.get(key)

    def remember(self, key: tuple[object, ...], result: StageResult) -> None:
        with self._memo_lock:
            self._memo[key] = result

    def latest(self, stage: str, builder: str) -> str | None:
        """The image last built in this process for `stage` by `builder` (keys start with both)."""
        with self._memo_lock:
            found = [r for k, r in self._memo.items() if k[:2] == (stage, builder)]
        return found[-1].image_id if found else None

    def stage(self, name: str, *, flag: str = "stage") -> Stage:
        return self.graph.stage(stage_named(self.graph, name, flag))


def stage_named(graph: Graph, name: str, flag: str) -> str:
    """The stage `name` (any case, or its task spelling), or one line with a suggestion."""
    found = graph.find(name)
    if found is None:
        near = graph.closest(name)
        hint = f"did you mean '{near}'? " if near else ""
        raise UserError(f"unknown stage '{name}' ({flag}); {hint}known stages: {', '.join(graph.names)}",
                        where=graph.path)
    return found.name


def project_slug(dockerfile: Path, context: Path) -> str:
    """`<context folder>-<8 hex of the Dockerfile's absolute path>`: readable, and two
    projects with the same folder and stage names never share images."""
    base = re.sub(r"[^a-z0-9]+", "-", context.resolve().name.lower()).strip("-") or "project"
    digest = hashlib.sha256(str(dockerfile.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[:40]}-{digest}"
