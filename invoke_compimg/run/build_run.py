"""One build of one project with one set of settings: which units to build, reuse of
unchanged ones, tagging, and the end-of-build table. Knows nothing of Invoke.

A unit is what one build request makes: a stage with the classic builder (other stages
by image ID), a requested target with BuildKit (one solve of every stage it needs). The
`scheduler` runs units as soon as what they need is done; `reuse` skips unchanged ones.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from ..building import context, reuse, scheduler
from ..building.project import Project
from ..building.settings import Settings
from ..dockerfile import lowering
from ..dockerfile.model import PREDEFINED_ARGS, Stage, buildkit_only, classic_only
from ..dockerfile.parse import onbuild_sources, parse_file
from ..engine import client as engine
from ..errors import EngineError, Interrupted, UserError
from ..progress import Reporter, Row

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Plan:
    text: str  # the Dockerfile sent
    lowered: lowering.Lowered
    paths: list[str]  # context paths sent
    images: tuple[str, ...]  # external images read
    prefix: str  # the folder the context goes under (BuildKit)
    ids: dict[str, str]  # classic: the image IDs of the stages it reads


@dataclass(frozen=True)
class Unit:
    name: str  # the stage it makes an image of
    stages: tuple[Stage, ...]  # the stages one request builds (classic: just that one)
    needs: tuple[str, ...]  # units that must exist first (classic: the stages it reads)


class BuildRun:
    """Builds stages of one project, reporting to `reporter`."""

    def __init__(self, project: Project, settings: Settings, reporter: Reporter,
                 api: docker.APIClient | None = None) -> None:
        self.project = project
        self.settings = settings
        self.reporter = reporter
        # A build arg that sets a global ARG can change a FROM (`FROM golang:${GO}`, or even
        # which stage a stage builds on): then the file is read again with it, so the images
        # pulled, pinned in the inputs digest and named in messages are the ones built from.
        overrides = {k: v for k, v in settings.build_args.items() if k in project.graph.global_arg_names}
        self.graph = (parse_file(project.dockerfile, overrides, context=project.context) if overrides
                      else project.graph)
        self.results: dict[str, Row] = {}
        self.images = reuse.ExternalImages()
        self._main_api = api
        self._local = threading.local()
        self._lock = threading.Lock()
        self._running: set[str] = set()  # BuildKit solves going on (their build IDs)

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

    @functools.cached_property
    def builder(self) -> str:
        """The builder that runs: `auto` takes BuildKit where the engine offers it."""
        kind = engine.kind(self.api)
        if self.settings.builder == "auto":
            return "buildkit" if kind.buildkit and not classic_only(self.graph.stages) else "classic"
        if self.settings.builder == "buildkit" and not kind.buildkit:
            raise UserError(f"--builder buildkit: {kind.name} at {engine.address()} offers no BuildKit; "
                            "use --builder classic (or auto)")
        return self.settings.builder

    # --- what to build ------------------------------------------------------------------
    def build(self, targets: Sequence[str]) -> dict[str, str]:
        """Build `targets` (stage names) and every stage they need; {stage: image ID}. The
        classic builder makes one request per stage; BuildKit one solve per target, the
        solves running side by side and sharing the engine's cache."""
        graph = self.graph
        needed = [s for s in graph.stages if s.name in {n.name for t in targets for n in graph.needs(t)}]
        self.check_features(needed)
        self._warn_unused_args(needed)
        if self.builder == "classic":
            units = [Unit(s.name, (s,), s.depends_on) for s in needed]
            jobs = self.settings.jobs
        else:
            # A stage with a tag needs an image of its own: a solve of its own, after the
            # target's whose cache then holds it (the same image, for a fraction of the time).
            goals = list(dict.fromkeys(targets))
            tagged = [s.name for s in needed if self.settings.tags.get(s.name) and s.name not in goals]
            units = [Unit(t, graph.needs(t), ()) for t in goals]
            units += [Unit(t, graph.needs(t), tuple(g for g in goals if t in {s.name for s in graph.needs(g)}))
                      for t in tagged]
            jobs = len(units)
        by_name = {u.name: u for u in units}
        with self._cancelled_on_interrupt():
            ids = scheduler.run(units, lambda u: [by_name[n] for n in u.needs], self._build_unit, jobs=jobs,
                                on_failure=lambda exc: self.reporter.warning(f"also failed: {exc}"))
        return {unit.name: image_id for unit, image_id in ids.items()}

    def build_stage(self, stage: Stage) -> Row:
        """Build one stage; with the classic builder from the images its prerequisites
        already have (BuildKit builds them in the same solve, from its cache)."""
        self.check_features([stage])
        needs = stage.depends_on if self.builder == "classic" else ()
        stages = (stage,) if self.builder == "classic" else self.graph.needs(stage.name)
        with self._cancelled_on_interrupt():
            return self._build_unit(Unit(stage.name, stages, needs), {}, lambda _: None)

    def check_features(self, stages: Sequence[Stage]) -> None:
        """Refuse, before any request, what the chosen builder cannot do."""
        where = str(self.project.dockerfile)
        for stage in stages:
            for instruction in stage.instructions:
                need = buildkit_only(instruction)
                if need and self.builder == "classic":
                    raise UserError(f"{need} needs BuildKit, and this build uses the classic builder "
                                    f"({engine.kind(self.api).name}); build with --builder buildkit",
                                    where=where, line=instruction.line)
                if self.builder == "buildkit" and instruction in classic_only([stage]):
                    raise UserError("ONBUILD with a stage reference (`COPY --from=<stage>` in a trigger) is not "
                                    "run correctly by this engine's BuildKit; build with --builder classic "
                                    "(auto does)", where=where, line=instruction.line)
                for mount in getattr(instruction, "mounts", ()):
                    if mount.type in ("secret", "ssh"):
                        raise UserError(f"RUN --mount=type={mount.type} is not supported yet (it needs a "
                                        "BuildKit session); pass what it needs as a build arg or a file in "
                                        "the context for now", where=where, line=instruction.line)

    def _warn_unused_args(self, stages: Sequence[Stage]) -> None:
        """Docker's "build-args were not consumed", once, for args no needed stage declares."""
        declared = set(self.args_for(stages))
        unused = sorted(set(self.settings.build_args) - declared)
        if unused:
            self.reporter.warning(f"build arg(s) {', '.join(unused)} declared by no stage this build uses "
                                  f"(no ARG {unused[0]}); check the name, or add the ARG")

    @contextlib.contextmanager
    def _cancelled_on_interrupt(self) -> Iterator[None]:
        """Ctrl-C (`compimg` raises Interrupted from its SIGINT handler, `invoke` a
        KeyboardInterrupt) cancels what the engine builds for us, and says so truly."""
        try:
            yield
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(self._cancel_running()) from None

    def _cancel_running(self) -> str:
        """Ctrl-C: cancel what the engine is building for us; the line to show."""
        if engine.kind(self.api).podman:
            return ("interrupted: Podman has no API to cancel a build, so the step it is running finishes "
                    "on its own and nothing is tagged; temporary containers and folders of this run were removed")
        from ..engine import buildkit

        with self._lock:
            running = list(self._running)
        for build_id in running:
            with contextlib.suppress(Exception):  # the connection closing cancels it too
                buildkit.cancel(self.api, build_id)
        return ("interrupted: running builds were cancelled on the engine; temporary containers and "
                "folders of this run were removed")

    def _note_running(self, build_id: str | None, previous: list[str]) -> None:
        with self._lock:
            if build_id is None:
                self._running.difference_update(previous)
            else:
                previous.append(build_id)
                self._running.add(build_id)

    # --- one unit -----------------------------------------------------------------------
    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        """The build args these stages consume: their own ARGs, the global ARGs, and
        Docker's predefined proxy args. Others are not sent (Docker would warn)."""
        names = set(self.graph.global_arg_names) | PREDEFINED_ARGS
        for stage in stages:
            names.update(stage.args)
        args = {k: v for k, v in self.settings.build_args.items() if k in names}
        if self.settings.cache_to == "inline" and self.builder == "buildkit":
            args["BUILDKIT_INLINE_CACHE"] = "1"  # BuildKit's way of embedding cache metadata
        return args

    def _memo_key(self, unit: Unit, args: Mapping[str, str]) -> tuple[str, str, tuple[tuple[str, str], ...], bool]:
        return (unit.name, self.builder, tuple(sorted(args.items())), self.settings.no_cache)

    def _build_unit(self, unit: Unit, known: Mapping[Unit, str], ready: Callable[[str], None]) -> Row:
        stage = unit.stages[-1]
        args = self.args_for(unit.stages)
        key = self._memo_key(unit, args)
        with self.project.memo_lock:
            memo = self.project.memo.get(key)
        if memo is not None and engine.image_id_of(self.api, memo.image_id) == memo.image_id:
            ready(memo.image_id)
            self._apply_tags(stage.name, memo.image_id)
            return self._done(Row(stage.name, memo.image_id, memo.size, 0.0, "memo", self.builder))
        started = time.monotonic()
        self.reporter.stage_started(stage.name)
        self._ensure_images(unit.stages)
        plan = self._plan(unit, {u.name: i for u, i in known.items()})
        digest = reuse.inputs_digest(self.api, self.images, kind=self.builder, name=stage.name, text=plan.text,
                                     image_refs=plan.images, args=args,
                                     context=str(self.project.context), paths=plan.paths)
        found = None if self.settings.no_cache else reuse.find(self.api, self.project, stage.name, digest)
        seconds: dict[str, float] = {}
        if found is not None:
            image_id, size, names, how = str(found["Id"]), int(found["Size"]), found.get("RepoTags") or [], "reused"
            ready(image_id)
        else:
            previous = engine.inspect(self.api, self.project.local_ref(stage.name))
            with self._context_errors(stage):
                archive = context.archive(str(self.project.context), plan.text, plan.paths, prefix=plan.prefix)
            try:
                image_id, seconds = self._send(unit, plan, archive, args)
            except UserError as exc:
                self.reporter.stage_failed(stage.name, str(exc))
                raise
            finally:
                archive.close()
            ready(image_id)
            size, names, how = -1, [self.project.local_ref(stage.name)], "built"
        reuse.record(self.api, self.project, stage.name, digest, image_id, names)
        # Your tags move to the new image first, so the superseded one is unnamed when it is
        # retired, and goes.
        self._apply_tags(stage.name, image_id)
        if found is None:
            keep = self.project.inputs_ref(stage.name, digest) if digest else None
            reuse.retire(self.api, self.project, stage.name, previous, image_id, keep, self.builder)
        if size < 0:
            size = engine.image_size(self.api, image_id)
        elapsed = time.monotonic() - started
        result = Row(stage.name, image_id, size, elapsed, how, self.builder)
        for other in unit.stages[:-1]:  # stages BuildKit built inside this solve: their time
            if other.name in seconds and other.name not in self.results:
                self.reporter.stage_finished(other.name, "", seconds[other.name], how)
                self._done(Row(other.name, "", -1, seconds[other.name], how, self.builder))
        self.reporter.stage_finished(stage.name, image_id, result.seconds, how)
        with self.project.memo_lock:
            self.project.memo[key] = result
        return self._done(result)

    def _plan(self, unit: Unit, known: Mapping[str, str]) -> Plan:
        """What one request sends: the lowered text, the context paths, the images read."""
        stage = unit.stages[-1]
        sources = [src for s in unit.stages for src in self._context_sources(s)]
        with self._context_errors(stage):
            paths = context.files_read(str(self.project.context), sources)
        images = tuple(dict.fromkeys(ref for s in unit.stages for ref in s.images))
        if self.builder == "classic":
            ids = {name: self._dependency_id(stage, name, known) for name in stage.depends_on}
            lowered = lowering.per_stage(self.graph, stage.name)
            return Plan(lowering.fill_placeholders(lowered.text, ids), lowered, paths, images, "", ids)
        # The ONBUILD triggers of an external base image read the context as the user laid
        # it out, so a unit with such triggers is sent without the `ctx/` folder.
        prefix = "" if any(self._external_triggers(s) for s in unit.stages) else lowering.CONTEXT_PREFIX
        lowered = lowering.multi_stage(self.graph, unit.stages, context_prefix=prefix)
        return Plan(lowered.text, lowered, paths, images, prefix, {})

    def _send(self, unit: Unit, plan: Plan, archive: IO[bytes],
              args: Mapping[str, str]) -> tuple[str, dict[str, float]]:
        # Each builder's module is imported when it sends: a warm no-op sends nothing.
        from ..builders import buildkit as buildkit_builder
        from ..builders import classic

        stage = unit.stages[-1]
        where = str(self.project.dockerfile)
        if self.builder == "classic":
            image_id = classic.build(
                self.api, stage=stage.name, lowered=plan.lowered, ids=plan.ids,
                dockerfile=context.DOCKERFILE_IN_CONTEXT, archive=archive, build_args=args,
                no_cache=self.settings.no_cache,
                network=classic.network_for(self.settings.network, engine.kind(self.api).podman),
                cache_from=self.settings.cache_from, reporter=self.reporter, where=where, line=stage.line,
                tag=self.project.local_ref(stage.name))
            return image_id, {}
        mine: list[str] = []
        # A solve after another of this run (`unit.needs`) reads that one's fresh results
        # from the cache even under --no-cache: they were made now, and it must be the same image.
        no_cache = self.settings.no_cache and not unit.needs
        outcome = buildkit_builder.solve(
            self.api, target=stage.name, lowered=plan.lowered, archive=archive,
            dockerfile=context.DOCKERFILE_IN_CONTEXT, build_args=args,
            no_cache=no_cache, network=self.settings.network, cache_from=self.settings.cache_from,
            reporter=self.reporter, where=where, line=stage.line,
            running=lambda build_id: self._note_running(build_id, mine), tags=[self.project.local_ref(stage.name)])
        return outcome.image_id, outcome.stage_seconds

    def _ensure_images(self, stages: Sequence[Stage]) -> None:
        """Pull the external images these stages read that the engine lacks (all of them
        with --pull), one line each: BuildKit cannot pull without a session of its own."""
        wanted = {ref: stage for stage in reversed(stages) for ref in stage.images}  # first reader wins
        for ref, stage in reversed(list(wanted.items())):
            if ref == "scratch":
                continue
            if self.settings.pull or self.images.inspect(self.api, ref) is None:
                self.reporter.note(f"pulling {ref}", stage.name)
                try:
                    engine.pull(self.api, ref, lambda event: None)
                except EngineError as exc:  # the user's line: the FROM (or --from) that names it
                    line = next((i.line for i in stage.instructions if ref in i.value), stage.line)
                    raise EngineError(f"stage '{stage.name}': {exc}", where=str(self.project.dockerfile),
                                      line=line) from exc
                self.images.forget(ref)

    def _external_triggers(self, stage: Stage) -> tuple[str, ...]:
        return () if stage.base_stage or stage.base == "scratch" else self.images.triggers(self.api, stage.base)

    def _context_sources(self, stage: Stage) -> list[str]:
        """Context paths the stage reads: its own COPY/ADD/bind mounts, and those of the
        ONBUILD triggers of its base image, which run in it (`FROM golang:onbuild`)."""
        triggers = self._external_triggers(stage)
        return [*stage.context_sources, *(onbuild_sources(triggers) if triggers else [])]

    def _done(self, result: Row) -> Row:
        with self._lock:
            self.results[result.stage] = result
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
            task = self.graph.stage(name).task_name
            raise UserError(f"stage '{stage.name}' needs stage '{name}', which has not been "
                            f"built; run `{self.settings.task('stage.' + task)}` or "
                            f"`{self.settings.task('build')}` first",
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
        order = {stage.name: stage.index for stage in self.graph.stages}
        return sorted(self.results.values(), key=lambda r: order[r.stage])

    def summary(self, shipped: str | None) -> None:
        self.reporter.table(self.rows(), shipped)
