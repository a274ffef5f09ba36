"""One build of one project with one set of settings: which units to build, reuse of
unchanged ones, tagging, and the end-of-build table. Knows nothing of Invoke.

A unit is what one build request makes: a stage with the classic builder (other stages
by image ID), a requested target with BuildKit (one solve of every stage it needs). The
`scheduler` runs units as soon as what they need is done; `reuse` skips unchanged ones.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import docker

from . import classic, context, engine, lowering, reuse, scheduler
from .errors import UserError
from .graph import PREDEFINED_ARGS, Stage
from .progress import Reporter, Row
from .project import Project, StageResult
from .settings import Settings


@dataclass(frozen=True)
class Unit:
    name: str  # the stage it makes an image of
    stages: tuple[Stage, ...]  # the stages one request builds (classic: just that one)
    needs: tuple[str, ...]  # units that must exist first (classic: the stages it reads)


class Session:
    """Builds stages of one project, reporting to `reporter`."""

    def __init__(self, project: Project, settings: Settings, reporter: Reporter,
                 api: docker.APIClient | None = None) -> None:
        self.project = project
        self.settings = settings
        self.reporter = reporter
        self.results: dict[str, StageResult] = {}
        self.images = reuse.ExternalImages()
        self._main_api = api
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def api(self) -> docker.APIClient:
        """One client per thread (requests sessions are not shared across threads); only
        the first one negotiates the API version."""
        client = getattr(self._local, "api", None)
        if client is None:
            if self._main_api is None:
                self._main_api = engine.connect()
                client = self._main_api
            else:
                client = engine.connect(version=self._main_api.api_version)
            self._local.api = client
        return client

    @property
    def builder(self) -> str:
        return "classic"

    # --- what to build ------------------------------------------------------------------
    def build(self, targets: Sequence[str]) -> dict[str, str]:
        """Build `targets` (stage names) and every stage they need; {stage: image ID}."""
        self.api  # noqa: B018 - connect (and fail clearly) before starting any worker
        wanted = {s.name for t in targets for s in self.project.graph.needs(t)}
        units = [Unit(s.name, (s,), s.depends_on) for s in self.project.graph.stages if s.name in wanted]
        by_name = {u.name: u for u in units}
        ids = scheduler.run(units, lambda u: [by_name[n] for n in u.needs], self._build_unit,
                            jobs=self.settings.jobs,
                            on_failure=lambda exc: self.reporter.warning(f"also failed: {exc}"))
        return {unit.name: image_id for unit, image_id in ids.items()}

    def build_stage(self, stage: Stage) -> StageResult:
        """Build one stage from the images its prerequisites already have."""
        return self._build_unit(Unit(stage.name, (stage,), stage.depends_on), {}, lambda _: None)

    # --- one unit -----------------------------------------------------------------------
    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        """The build args these stages consume: their own ARGs, the global ARGs, and
        Docker's predefined proxy args. Others are not sent (Docker would warn)."""
        names = set(self.project.graph.global_arg_names) | PREDEFINED_ARGS
        for stage in stages:
            names.update(stage.args)
        return {k: v for k, v in self.settings.build_args.items() if k in names}

    def _memo_key(self, unit: Unit, args: Mapping[str, str]) -> tuple[str, str, tuple[tuple[str, str], ...], bool]:
        return (unit.name, self.builder, tuple(sorted(args.items())), self.settings.no_cache)

    def _build_unit(self, unit: Unit, known: Mapping[Unit, str], ready: Callable[[str], None]) -> StageResult:
        stage = unit.stages[-1]
        args = self.args_for(unit.stages)
        key = self._memo_key(unit, args)
        with self.project.memo_lock:
            memo = self.project.memo.get(key)
        if memo is not None and engine.image_id_of(self.api, memo.image_id) == memo.image_id:
            ready(memo.image_id)
            self._apply_tags(stage.name, memo.image_id)
            return self._done(StageResult(stage.name, memo.image_id, memo.size, 0.0, "memo", self.builder))
        started = time.monotonic()
        known_ids = {u.name: i for u, i in known.items()}
        self.reporter.stage_started(stage.name)
        ids = {name: self._dependency_id(stage, name, known_ids) for name in stage.depends_on}
        lowered = lowering.per_stage(self.project.graph, stage.name)
        text = lowering.fill_placeholders(lowered.text, ids)
        where = str(self.project.dockerfile)
        with self._context_errors(stage):
            paths = context.files_read(str(self.project.context), self._context_sources(stage))
        digest = reuse.inputs_digest(self.api, self.images, kind=self.builder, name=stage.name, text=text,
                                     image_refs=stage.images, args=args,
                                     context=str(self.project.context), paths=paths)
        found = None if self.settings.no_cache else reuse.find(self.api, self.project, stage.name, digest)
        if found is not None:
            image_id, size, names, how = str(found["Id"]), int(found["Size"]), found.get("RepoTags") or [], "reused"
            ready(image_id)
        else:
            previous = engine.inspect(self.api, self.project.local_ref(stage.name))
            with self._context_errors(stage):
                archive = context.archive(str(self.project.context), text, paths)
            try:
                image_id = classic.build(
                    self.api, stage=stage.name, lowered=lowered, ids=ids, archive=archive, build_args=args,
                    no_cache=self.settings.no_cache, network=self.settings.network,
                    cache_from=self.settings.cache_from, reporter=self.reporter, where=where, line=stage.line)
            except UserError as exc:
                self.reporter.stage_failed(stage.name, str(exc))
                raise
            finally:
                archive.close()
            ready(image_id)
            size, names, how = -1, [], "built"
        reuse.record(self.api, self.project, stage.name, digest, image_id, names)
        if found is None:
            keep = self.project.inputs_ref(stage.name, digest) if digest else None
            reuse.retire(self.api, self.project, stage.name, previous, image_id, keep)
        self._apply_tags(stage.name, image_id)
        if size < 0:
            size = engine.image_size(self.api, image_id)
        result = StageResult(stage.name, image_id, size, time.monotonic() - started, how, self.builder)
        self.reporter.stage_finished(stage.name, image_id, result.seconds, how)
        with self.project.memo_lock:
            self.project.memo[key] = result
        return self._done(result)

    def _context_sources(self, stage: Stage) -> list[str]:
        """Context paths the stage reads: its own COPY/ADD/bind mounts, and those of the
        ONBUILD triggers of its base image, which run in it (`FROM golang:onbuild`)."""
        sources = list(stage.context_sources)
        if not stage.base_stage:
            triggers = self.images.triggers(self.api, stage.base)
            if triggers:
                sources += trigger_sources(triggers)
        return sources

    def _done(self, result: StageResult) -> StageResult:
        with self._lock:
            self.results[result.name] = result
        return result

    def _dependency_id(self, stage: Stage, name: str, known: Mapping[str, str]) -> str:
        if name in known:
            return known[name]
        with self.project.memo_lock:
            built = [r for k, r in self.project.memo.items()
                     if isinstance(k, tuple) and k[0] == name and k[1] == self.builder]
        if built:
            return built[-1].image_id
        found = engine.image_id_of(self.api, self.project.local_ref(name))
        if found is None:
            task = self.project.graph.stage(name).task_name
            raise UserError(f"stage '{stage.name}' needs stage '{name}', which has not been "
                            f"built; run its task (stage.{task}) or build first",
                            where=str(self.project.dockerfile), line=stage.line)
        return found

    @contextlib.contextmanager
    def _context_errors(self, stage: Stage) -> Iterator[None]:
        """The file system's errors while reading the build context, as one line."""
        try:
            yield
        except OSError as exc:
            raise UserError(f"stage '{stage.name}' cannot read its build context {self.project.context} "
                            f"({exc}); check that folder's files and permissions",
                            where=str(self.project.dockerfile), line=stage.line) from exc

    def _apply_tags(self, stage: str, image_id: str) -> None:
        for ref in self.settings.tags.get(stage, ()):
            engine.tag(self.api, image_id, ref)
            self.reporter.note(f"tagged {ref} ({image_id})", stage)

    # --- after the build ----------------------------------------------------------------
    def rows(self) -> list[Row]:
        order = {stage.name: stage.index for stage in self.project.graph.stages}
        return [Row(r.name, r.image_id, r.size, r.seconds, r.how, r.builder)
                for r in sorted(self.results.values(), key=lambda r: order[r.name])]

    def summary(self, shipped: str | None) -> None:
        self.reporter.table(self.rows(), shipped)


def trigger_sources(triggers: Sequence[str]) -> list[str]:
    """Context paths that ONBUILD triggers (`COPY . /go/src/app`) read. A trigger we cannot
    read counts as reading the whole context."""
    from .syntax import parse_text

    try:
        graph = parse_text("FROM scratch\n" + "\n".join(triggers) + "\n", "ONBUILD")
    except UserError:
        return ["."]
    return list(graph.final.context_sources)

