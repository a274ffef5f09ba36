"""One run of a build of one project with one set of settings: which units to build, reuse of
unchanged ones, tagging, and the end-of-build table. Knows nothing of Invoke, and of the
builders only their interface (`builders.Builder`).

The builder splits the build into units (one request each); the `scheduler` runs them as
soon as what they need is done; `reuse` skips unchanged ones.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..builders import Builder, Plan, Sent, Unit, choose
from ..building import reuse, scheduler
from ..building.exports import ExportRecord
from ..building.project import Project
from ..building.settings import Settings
from ..building.specs import STDOUT
from ..dockerfile.model import Graph, Platform, Platforms, Stage
from ..dockerfile.parse import parse_file
from ..engine import images
from ..engine.client import Engine
from ..errors import EngineError, Interrupted, UserError
from ..names import normalise_ref
from ..progress import Reporter, StageResult

if TYPE_CHECKING:
    from ..host.safe_extract import Extracted


class BuildRun:
    """Builds stages of one project, reporting to `reporter`."""

    def __init__(self, project: Project, settings: Settings, reporter: Reporter, engine: Engine | None = None) -> None:
        self.project = project
        self.settings = settings
        self.reporter = reporter
        self.engine = engine if engine is not None else Engine()
        self.results: dict[str, StageResult] = {}
        self._exporting: str | None = None  # the unit whose result goes to `settings.output`
        self.images = reuse.ExternalImages()
        self._lock = threading.Lock()

    @property
    def api(self):  # type: ignore[no-untyped-def]  # the SDK's client, for callers that need one
        return self.engine.api

    @functools.cached_property
    def graph(self) -> Graph:
        """The project's graph as this build reads it. A build arg that sets a global ARG can
        change a FROM (`FROM golang:${GO}`, or even which stage a stage builds on), and so can
        `--platform` (`FROM ${TARGETOS}`): then the file is read again with them, so the images
        pulled, pinned in the inputs digest and named in messages are the ones built from."""
        project, settings = self.project, self.settings
        overrides = {k: v for k, v in settings.build_args.items() if k in project.graph.global_arg_names}
        platforms = None
        if settings.platforms:
            # The platform builds run on: the engine's (a BuildKit service is taken as linux/amd64
            # here; it expands the ARGs itself when it builds).
            build = Platform.parse(self.engine.kind.platform) if settings.buildkit is None else Platform()
            platforms = Platforms(target=Platform.parse(settings.platforms[0]), build=build)
        if not overrides and platforms is None:
            return project.graph
        return parse_file(project.dockerfile, overrides, context=project.context, platforms=platforms)

    @functools.cached_property
    def builder(self) -> Builder:
        kind = choose(self.settings.builder, self.engine, self.graph, self.settings.buildkit)
        return kind(self.engine, self.project, self.graph, self.settings, self.reporter, self.images)

    # --- what to build ------------------------------------------------------------------
    def build(self, targets: Sequence[str]) -> dict[str, str]:
        """Build `targets` (stage names) and every stage they need; {stage: image ID}."""
        graph = self.graph
        wanted = {n.name for t in targets for n in graph.needs(t)}
        needed = [s for s in graph.stages if s.name in wanted]
        self.builder.check(needed)
        self._warn_unused_args(needed)
        if self.settings.output is not None:
            self._check_output(targets[0])
        if self.settings.no_cache or not self.builder.stores_images:
            self.builder.prepare()  # a solve will surely be sent
        units = self.builder.units(needed, targets)
        by_name = {u.name: u for u in units}
        with self._cancelled_on_interrupt():
            ids = scheduler.run(units, lambda u: [by_name[n] for n in u.needs], self._build_unit,
                                jobs=self.builder.jobs,
                                on_failure=lambda exc: self.reporter.warning(f"also failed: {exc}"))
        return {unit.name: image_id for unit, image_id in ids.items()}

    def _check_output(self, target: str) -> None:
        """`--output` writes the target's files instead of making its image."""
        output = self.settings.output
        assert output is not None
        if not self.builder.exports:
            raise UserError(f"--output {output.dest}: writing a build's files needs BuildKit with a session, and this "
                            f"build uses the {self.builder.name} builder on {self.engine.kind.name}; "
                            "drop --output and use extract-artifact")
        if output.dest == STDOUT:
            if sys.stdout.isatty():
                raise UserError("--output -: refusing to write a tar to the terminal; redirect stdout "
                                "(compimg build -o - > out.tar)")
        elif output.type == "tar" and os.path.isdir(output.dest):
            raise UserError(f"--output type=tar,dest={output.dest}: that is a folder; give a file name "
                            "(or type=local to write the files into the folder)")
        if output.type == "local" and os.path.exists(output.dest) and not os.path.isdir(output.dest):
            raise UserError(f"--output {output.dest}: that is a file, not a folder; give a folder "
                            "(or type=tar,dest=FILE for one tar file)")
        if self.settings.tags.get(target) and self.builder.stores_images:
            raise UserError(f"--output {output.dest} writes stage '{target}' as files and makes no image to tag; "
                            "drop its --tag, or build without --output")
        self._exporting = target

    def build_stage(self, stage: Stage) -> StageResult:
        """Build one stage; with the classic builder from the images its prerequisites
        already have (BuildKit builds them in the same solve, from its cache)."""
        self.builder.check([stage])
        with self._cancelled_on_interrupt():
            return self._build_unit(self.builder.unit_for(stage), {}, lambda _: None)

    def _warn_unused_args(self, stages: Sequence[Stage]) -> None:
        """Docker's "build-args were not consumed", once, for args no needed stage declares."""
        declared = set(self.builder.args_for(stages))
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
        except KeyboardInterrupt:
            raise Interrupted(self.builder.cancel()) from None
        except Interrupted as exc:  # a signal's handler raised it: its exit status stays
            raise Interrupted(self.builder.cancel(), code=exc.code) from None

    # --- one unit -----------------------------------------------------------------------
    def _memo_key(self, unit: Unit, args: Mapping[str, str]) -> tuple[object, ...]:
        return (unit.name, self.builder.name, tuple(sorted(args.items())), self.settings.no_cache,
                self.settings.platforms)

    def _build_unit(self, unit: Unit, known: Mapping[Unit, str], ready: Callable[[str], None]) -> StageResult:
        stage = unit.stage
        builder = self.builder
        args = builder.args_for(unit.stages)
        if unit.name == self._exporting or not builder.stores_images:
            return self._solve_unit(unit, args, ready)
        key = self._memo_key(unit, args)
        memo = self.project.recall(key)
        if memo is not None and images.image_id_of(self.engine, memo.image_id) == memo.image_id:
            ready(memo.image_id)
            self._apply_tags(stage.name, memo.image_id)
            return self._done(StageResult(stage.name, memo.image_id, memo.size, 0.0, "memo", builder.name))
        started = time.monotonic()
        self.reporter.stage_started(stage.name)
        self._ensure_images(unit.stages)
        plan = builder.plan(unit, {u.name: i for u, i in known.items()})
        digest = self._inputs_digest(unit, plan, args)
        found = None if self.settings.no_cache else reuse.find(self.engine, self.project, stage.name, digest)
        sent: Sent | None = None
        if found is not None:
            image_id, size, names, outcome = str(found["Id"]), int(found["Size"]), found.get("RepoTags") or [], "reused"
            ready(image_id)
        else:
            previous = images.inspect(self.engine, self.project.local_ref(stage.name))
            listed = reuse.records_listing(self.engine, self.project, stage.name, previous, builder.name)
            record_ref = [self.project.inputs_ref(stage.name, digest)] if digest else []
            try:  # (named the record of its inputs as it is stored, where the builder can)
                sent = builder.send(unit, plan, args, names=record_ref)
            except EngineError as exc:
                self.reporter.stage_failed(exc.stage or stage.name, str(exc))  # the stage whose step failed
                raise
            image_id = sent.image_id
            ready(image_id)
            size, names, outcome = -1, [self.project.local_ref(stage.name), *sent.names], "built"
        reuse.record(self.engine, self.project, stage.name, digest, image_id, names)
        # Your tags move to the new image first, so the superseded one is unnamed when it is
        # retired, and goes.
        self._apply_tags(stage.name, image_id)
        if found is None:
            keep = self.project.inputs_ref(stage.name, digest) if digest else None
            reuse.retire(self.engine, self.project, stage.name, previous, image_id, keep, builder.name, listed)
        if size < 0:
            size = images.image_size(self.engine, image_id)
        result = StageResult(stage.name, image_id, size, time.monotonic() - started, outcome, builder.name)
        if sent is not None:
            self._record_inside(unit, sent)
        self.reporter.stage_finished(stage.name, image_id, result.seconds, outcome)
        self.project.remember(key, result)
        return self._done(result)

    def _inputs_digest(self, unit: Unit, plan: Plan, args: Mapping[str, str]) -> str | None:
        builder, stage = self.builder, unit.stage
        with builder.reading_context(stage):  # the files are hashed: unreadable or gone is one line
            return reuse.inputs_digest(self.engine, self.images, kind=builder.name, name=stage.name,
                                       text=plan.text, image_refs=plan.images, args=args,
                                       platforms=self.settings.platforms, context=str(self.project.context),
                                       paths=plan.paths)

    def _solve_unit(self, unit: Unit, args: Mapping[str, str], ready: Callable[[str], None]) -> StageResult:
        """A unit solved as `docker build -o` and buildctl do (BuildKit's cache makes an unchanged
        one quick): the target of an `--output` build (its files written, no image), or any unit
        on a BuildKit service (no image store: the result is pushed or nothing). An output whose
        inputs and destination are as the last export left them is not written again
        (`building.exports`)."""
        output = self.settings.output if unit.name == self._exporting else None
        stage = unit.stage
        started = time.monotonic()
        self.reporter.stage_started(stage.name)
        if self.builder.stores_images:
            self._ensure_images(unit.stages)
        plan = self.builder.plan(unit, {})
        record, digest = None, None
        if output is not None and output.dest != STDOUT and self.builder.stores_images and not self.settings.no_cache:
            record, digest = ExportRecord(output.dest, output.type), self._inputs_digest(unit, plan, args)
            if digest is not None and record.holds(digest):
                ready("")
                self.reporter.stage_finished(stage.name, "", time.monotonic() - started, "reused")
                self.reporter.note(f"{output.dest} is up to date (inputs unchanged since it was written)", stage.name)
                return self._done(StageResult(stage.name, "", -1, 0.0, "reused", self.builder.name))
            record.forget()
        self.builder.prepare()  # a solve will be sent: grpc's import and the connection, meanwhile
        try:
            sent = self.builder.send(unit, plan, args, output)
        except EngineError as exc:
            self.reporter.stage_failed(exc.stage or stage.name, str(exc))  # the stage whose step failed
            raise
        ready(sent.image_id)
        # remembered only if the inputs did not change while it was built (an edit during the
        # build went into this export; put back later, the digest would match the wrong files)
        if record is not None and digest is not None and self._inputs_digest(unit, plan, args) == digest:
            record.remember(digest)
        seconds = time.monotonic() - started
        self._record_inside(unit, sent)
        outcome = "exported" if output is not None else "pushed" if sent.image_id else "cached"
        self.reporter.stage_finished(stage.name, sent.image_id, seconds, outcome)
        if output is not None:
            self.reporter.note(f"wrote {output.dest}" + (" (tar)" if output.type == "tar" else ""), stage.name)
        elif sent.image_id:
            for ref in self.settings.tags.get(stage.name, ()):
                self.reporter.note(f"pushed {ref}@{sent.image_id}", stage.name)
        return self._done(StageResult(stage.name, sent.image_id, -1, seconds, outcome, self.builder.name))

    def _record_inside(self, unit: Unit, sent: Sent) -> None:
        """The table's rows of the stages BuildKit built inside this unit's solve (the solve view
        showed each finished). None has an image of its own to measure: its base image's size
        is the size it has at least (a stage only adds to its base)."""
        floors: dict[str, int] = {}
        for other in unit.stages[:-1]:
            if other.name not in sent.stage_outcomes or other.name in self.results:
                continue
            floor = floors[other.name] = self._size_floor(other, floors)
            self._done(StageResult(other.name, "", floor, sent.stage_seconds.get(other.name, 0.0),
                                   sent.stage_outcomes[other.name], self.builder.name, inside=unit.name,
                                   at_least=floor >= 0))

    def _size_floor(self, stage: Stage, floors: Mapping[str, int]) -> int:
        """What `stage` measures at least: its base image's size (or its base stage's), or -1
        when unknown: a base the engine does not hold, or an image for another platform."""
        if stage.base_stage:
            known = self.results.get(stage.base)
            return known.size if known is not None else floors.get(stage.base, -1)
        if stage.base == "scratch" or self.settings.platforms or not self.builder.stores_images:
            return -1
        found = self.images.inspect(self.engine, stage.base)
        return int(found["Size"]) if found is not None else -1

    def extract(self, stage: str, image_id: str, path: str, dest: str) -> Extracted:
        """Copy `path` of `image_id` (stage `stage`'s image) into the folder `dest`, merged in as
        `docker cp` does: through the builder when it has a way of its own (BuildKit: a local
        export, no container), else out of a container that is never started."""
        from ..host.artifacts import copy_out, count_entries
        from ..host.safe_extract import Extracted

        names = self._extract_by_builder(stage, image_id, path, dest) if self.builder.exports else None
        if names is None:
            return copy_out(self.engine, self.project, stage, image_id, path, dest, self.reporter,
                            shell_task=self.settings.task("shell"))
        return Extracted(names=names, files=sum(count_entries(Path(dest) / name) for name in names))

    def _extract_by_builder(self, stage: str, image_id: str, path: str, dest: str) -> list[str] | None:
        # BuildKit reads images by name only, and the stage's own name may move meanwhile (another
        # run): its inputs record names exactly this image. Without one (an image that cannot be
        # pinned), the image gets a name of this process's for the while, removed after.
        found = images.inspect(self.engine, image_id) or {}
        record = next((ref for ref in found.get("RepoTags") or []
                       if normalise_ref(ref).startswith(self.project.inputs_ref(stage))), None)
        ref = record or f"{self.project.repository}:{stage[:80]}--x-{os.getpid()}-{threading.get_ident()}"
        if record is None:
            images.tag(self.engine, image_id, ref)
        try:
            self.reporter.note(f"copying {stage}:{path} into {dest}")
            return self.builder.extract(normalise_ref(ref), path, dest)
        except FileNotFoundError:
            from ..host.artifacts import missing_path

            raise missing_path(self.project, stage, path, self.settings.task("shell")) from None
        finally:
            if record is None:
                images.untag(self.engine, ref)

    def _ensure_images(self, stages: Sequence[Stage]) -> None:
        """Pull the external images these stages read that the engine lacks (all of them
        with --pull), one line each: BuildKit cannot pull without a session of its own."""
        wanted = {ref: stage for stage in reversed(stages) for ref in stage.images}  # first reader wins
        for ref, stage in reversed(list(wanted.items())):
            if ref == "scratch":
                continue
            if self.settings.pull or self.images.inspect(self.engine, ref) is None:
                self.reporter.note(f"pulling {ref}", stage.name)
                try:
                    images.pull(self.engine, ref)
                except EngineError as exc:  # the user's line: the FROM (or --from) that names it
                    line = next((i.line for i in stage.instructions if ref in i.value), stage.line)
                    near = self.graph.closest(ref.split(":")[0])
                    hint = f"; did you mean stage '{near}'? (--from names a stage or an image)" if near else ""
                    raise EngineError(f"stage '{stage.name}': {exc.message}{hint}", where=str(self.project.dockerfile),
                                      line=line) from exc
                self.images.forget(ref)

    def _done(self, result: StageResult) -> StageResult:
        with self._lock:
            self.results[result.stage] = result
        return result

    def _apply_tags(self, stage: str, image_id: str) -> None:
        for ref in self.settings.tags.get(stage, ()):
            before = images.image_id_of(self.engine, ref)
            images.tag(self.engine, image_id, ref)
            self.reporter.note(f"tagged {ref} ({image_id})", stage)
            if before is not None and before != image_id:  # a superseded image of ours it held goes
                reuse.release(self.engine, self.project, before)

    def close(self) -> None:
        """Release the builder's session and the engine's connections (after the run, however
        it ended)."""
        if "builder" in self.__dict__:
            self.builder.close()
        self.engine.close()

    def __enter__(self) -> BuildRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- after the build ----------------------------------------------------------------
    def rows(self) -> list[StageResult]:
        order = {stage.name: stage.index for stage in self.graph.stages}
        return sorted(self.results.values(), key=lambda r: order[r.stage])

    def summary(self, shipped: str | None) -> None:
        self.reporter.table(self.rows(), shipped)
