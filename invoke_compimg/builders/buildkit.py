"""The BuildKit builder: one solve of every stage a target needs, with a session through
BuildKit's Control API (or, on an engine without it, `POST /build` with a tar), its progress
shown in the user's terms (`solve_view`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import re
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..building import context
from ..building.specs import OutputSpec
from ..dockerfile.lowering import CONTEXT_PREFIX, extraction, multi_stage
from ..dockerfile.model import Instruction, Stage, classic_only
from ..errors import BuildRejected, EngineError, Interrupted, UserError
from ..names import split_ref
from .base import Builder, Plan, Sent, Unit, step_failed

if TYPE_CHECKING:
    from .solve_view import SolveView


class BuildKitBuilder(Builder):
    """One solve per requested target, of every stage it needs; a tagged stage gets a solve of
    its own. On an engine that serves BuildKit's gRPC API (Docker 18.09 and later) the solve
    goes through `Control.Solve` with a session that serves the context and the Dockerfile from
    disk, secrets, ssh agents and outputs; elsewhere through `POST /build?version=2` with a tar
    of the context, which can do none of those."""

    name = "buildkit"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._running: set[str] = set()  # build IDs of the tar solves going on
        self._cancels: set[threading.Event] = set()  # one per session solve going on
        self._solves_over = threading.Condition(self._lock)  # notified as each session solve ends
        self._builtin_frontend = False  # the `# syntax=` frontend could not be fetched: not asked for again

    @property
    def with_session(self) -> bool:
        """Do this engine's solves run with a session? Asked when a build is first sent (it
        connects to BuildKit's gRPC API, which imports grpc): an engine that lacks it, or a
        proxy in front of the engine that does not pass it on, gets solves without one, with
        one line saying why."""
        def works() -> bool:
            if not self.engine.kind.grpc:
                why = f"{self.engine.kind.name} has no BuildKit gRPC API (Docker 18.09 and later have)"
            else:
                try:
                    self.engine.control()
                    return True
                except EngineError as exc:
                    why = str(exc)
            self.reporter.warning(f"building without a BuildKit session: {why}; context files are sent as a tar, "
                                  "and secrets, ssh mounts and --output are not available")
            return False

        return bool(self.engine.remember("buildkit session", works))

    # --- what differs between the engine's BuildKit and a BuildKit service ------------------
    @property
    def serves_sessions(self) -> bool:
        """Can this BuildKit have sessions at all (known without connecting)?"""
        return self.engine.kind.grpc

    def control(self) -> Any:
        """The Control client solves go through."""
        return self.engine.control()

    def allowed(self, plan: Plan) -> list[str] | None:
        """The context paths a solve may read (None: all that .dockerignore leaves)."""
        return plan.paths

    def exporter(self, unit: Unit, output: OutputSpec | None, names: Sequence[str] = ()) -> Any:
        """Where a solve's result goes: files, or an image in the engine's store named as the
        unit's stage, and `names`."""
        from ..engine.control.client import Exporter

        if output is not None:
            return Exporter.local(output.dest) if output.type == "local" else Exporter.tar(output.dest)
        return Exporter.image([self.project.local_ref(unit.name), *names])

    def context_request(self, unit: Unit,
                        allow: Sequence[str] | None) -> tuple[list[str] | None, list[str] | None] | None:
        """The (followpaths, exclude-patterns) BuildKit's Dockerfile frontend asks the context
        with, as far as it can be told in advance: the unit's context sources, cleaned (`.`:
        all, no followpaths), and the patterns of `.dockerignore` if the session lets it read
        that file (`allow`). None when it cannot be told (a source with a variable) or nothing
        is read. A wrong guess costs a listing, no more: the session answers only the request
        it listed for."""
        sources = self.context_sources(unit)
        if not sources or any("$" in s for s in sources):
            return None
        cleaned = {posixpath.normpath("/" + s).lstrip("/") for s in sources}
        follow = None if "" in cleaned else sorted(cleaned)
        excludes: list[str] = []
        if allow is None or ".dockerignore" in allow or "." in allow:
            try:
                excludes = context.dockerignore_patterns(str(self.project.context))
            except (OSError, ValueError):
                return None
        return follow, excludes or None

    def network(self) -> str | None:
        from ..engine import buildkit as engine_buildkit  # (each of these imports waits for a solve)

        return engine_buildkit.network_for(self.engine, self.settings.network)

    @property
    def host_platform(self) -> str:
        """The platform BuildKit's steps run on."""
        return self.engine.kind.platform

    def check(self, stages: Sequence[Stage]) -> None:
        cache = self.settings.cache_to
        if cache is not None and cache.type != "inline":
            raise UserError(f"--cache-to type={cache.type}: the engine's BuildKit exports caches inline only; "
                            "use --cache-to inline, or build on a BuildKit service (--buildkit-host)")
        platforms = self.settings.platforms
        if len(platforms) > 1 and self.settings.output is None:
            raise UserError(f"--platform {','.join(platforms)}: the engine's image store keeps one platform per "
                            "image; write the files of all of them with -o DIR (DIR/linux_amd64/...), or build "
                            "one platform at a time")
        super().check(stages)

    def units(self, needed: Sequence[Stage], targets: Sequence[str]) -> list[Unit]:
        # A stage with a tag needs an image of its own: a solve of its own, after the target's,
        # whose cache then holds it (the same image, for a fraction of the time).
        graph = self.graph
        goals = list(dict.fromkeys(targets))
        tagged = [s.name for s in needed if self.settings.tags.get(s.name) and s.name not in goals]
        units = [Unit(t, graph.needs(t), ()) for t in goals]
        units += [Unit(t, graph.needs(t), tuple(g for g in goals if t in {s.name for s in graph.needs(g)}))
                  for t in tagged]
        return units

    def unit_for(self, stage: Stage) -> Unit:
        return Unit(stage.name, self.graph.needs(stage.name), ())

    def refuses(self, stage: Stage, instruction: Instruction) -> str | None:
        if instruction in classic_only([stage]):
            return ("an ONBUILD trigger with `COPY --from=` (a stage or an image) is not run correctly by this "
                    "engine's BuildKit; build with --builder classic (auto does)")
        for mount in getattr(instruction, "mounts", ()):
            if mount.type not in ("secret", "ssh"):
                continue
            if not self.serves_sessions:
                return (f"RUN --mount=type={mount.type} needs a BuildKit session, which {self.engine.kind.name} "
                        "does not serve (Docker 18.09 or later does)")
            wanted = mount.option("id") or ("default" if mount.type == "ssh" else mount.option("target") or "")
            given = {s.id for s in (self.settings.secrets if mount.type == "secret" else self.settings.ssh)}
            required = (mount.option("required") or "false").lower() in ("true", "1")
            if required and wanted not in given:
                flag = (f"--secret id={wanted},src=PATH" if mount.type == "secret"
                        else f"--ssh {wanted}" if wanted == "default" else f"--ssh {wanted}=SOCKET")
                return f"RUN --mount=type={mount.type},id={wanted} is required and this build has none; add {flag}"
        return None

    def args_for(self, stages: Sequence[Stage]) -> dict[str, str]:
        args = super().args_for(stages)
        if self.settings.cache_to is not None and self.settings.cache_to.type == "inline":
            args["BUILDKIT_INLINE_CACHE"] = "1"  # BuildKit's way of embedding cache metadata
        return args

    def plan(self, unit: Unit, known: Mapping[str, str]) -> Plan:
        lowered = multi_stage(self.graph, unit.stages, build_args=self.args_for(unit.stages),
                              image_config=self.image_config)
        return Plan(lowered.text, lowered, self.context_paths(unit), self.images_read(unit))

    @property
    def exports(self) -> bool:
        return self.serves_sessions  # known without connecting; a failed connection says so when sending

    def registry_hosts(self, unit: Unit) -> set[str] | None:
        """Registries whose credentials the session may give: any the user has a login for (the
        engine is the user's own; it pulls with them, as `docker build` lets it)."""
        return None

    def prepare(self) -> None:
        """Import grpc and connect to BuildKit on a thread of its own while the build is planned
        (0.1-0.2 s that would otherwise come after it)."""
        def connect() -> None:
            with contextlib.suppress(Exception):  # the solve connects again and says why
                if self.with_session:  # asked once per engine: a refusal is not asked again
                    self.control()

        threading.Thread(target=connect, name="compimg-buildkit-connect", daemon=True).start()

    def send(self, unit: Unit, plan: Plan, args: Mapping[str, str], output: OutputSpec | None = None,
             names: Sequence[str] = ()) -> Sent:
        lost_once = False
        while True:
            try:
                if self.with_session:
                    return self._solve_with_session(unit, plan, args, output, names=names)
                if output is not None:
                    raise UserError(f"--output {output.dest}: writing a build's files needs a BuildKit session, and "
                                    "this engine gave none (see the line above); build without --output and use "
                                    "extract-artifact", where=self.where, line=unit.stage.line)
                return self._solve_with_tar(unit, plan, args, names)
            except LostInput as lost:
                if lost_once:
                    raise lost.error from None
                lost_once = True
                self.reporter.warning(f"[{unit.name}] BuildKit lost this build's context or session "
                                      f"({lost.text}); sending it again, once")
            except EngineError as exc:
                if not self._frontend_unavailable(exc):
                    raise

    def _frontend_unavailable(self, error: EngineError) -> bool:
        """The `# syntax=` frontend could not be fetched (no registry, say): said once, and the
        file goes to BuildKit's built-in frontend instead, which builds it (we lower heredocs
        ourselves). True if the solve is to be sent again."""
        ref = self.graph.syntax
        if not ref or self._builtin_frontend:
            return False
        repository = split_ref(ref.split("@", 1)[0])[0]
        text = str(error)
        if "gateway.v0" not in text or repository not in text:
            return False
        with self._lock:
            warned, self._builtin_frontend = self._builtin_frontend, True
        if not warned:
            reason = text.rsplit(": ", 1)[-1]
            self.reporter.warning(f"# syntax={ref}: BuildKit cannot fetch that Dockerfile frontend ({reason}); "
                                  "building with its built-in one (compimg lowers heredocs itself)")
        return True

    def sent_text(self, text: str) -> str:
        """The Dockerfile text as sent: without its `# syntax=` line once that frontend proved
        out of reach (a bare `#` after the other directives keeps every line where it was)."""
        if not self._builtin_frontend or not text.startswith("# syntax="):
            return text
        lines = text.split("\n")
        directives = 1
        while directives < len(lines) and lines[directives].startswith("# escape="):
            directives += 1
        return "\n".join([*lines[1:directives], "#", *lines[directives:]])

    def extract(self, image_ref: str, path: str, dest: str) -> list[str] | None:
        """A local export of one path: `FROM scratch`, `COPY --from=IMAGE PATH /NAME`, solved
        with the image already on the engine and its files merged into `dest`. No image is
        made and no container."""
        if not self.with_session:
            return None
        name = posixpath.basename(path.rstrip("/")) or "root"
        stage, lowered = extraction(image_ref, path, "/" + name)
        plan = Plan(lowered.text, lowered, [], ())
        try:
            self._solve_with_session(Unit(stage.name, (stage,), ()), plan, {}, OutputSpec("local", dest), quiet=True)
        except EngineError as exc:
            # BuildKit names the copy's missing source in quotes (`"/out/app" not found`, newer
            # versions `"/out/app": not found`); any other "not found" (an image gone) stands.
            missing = re.escape(posixpath.normpath("/" + path.lstrip("/")))
            if re.search(f'"{missing}":? not found', str(exc)):
                raise FileNotFoundError(path) from exc
            raise
        return [name]

    # --- through Control.Solve, with a session ------------------------------------------------
    def _solve_with_session(self, unit: Unit, plan: Plan, args: Mapping[str, str], output: OutputSpec | None,
                            *, quiet: bool = False, names: Sequence[str] = ()) -> Sent:
        from ..engine.control.client import CacheEntry, Serving, SolveFailed, dockerfile_attrs, dockerfile_session

        target = unit.stage
        under = ""
        if plan.lowered.files:
            # Files the lowering made (heredocs) sit beside the user's, which go under `ctx/`:
            # a `COPY . .` then never sees ours.
            under = CONTEXT_PREFIX.rstrip("/")
            lowered = multi_stage(self.graph, unit.stages, context_prefix=CONTEXT_PREFIX,
                                  build_args=self.args_for(unit.stages), image_config=self.image_config)
            plan = Plan(lowered.text, lowered, plan.paths, plan.images)
        @functools.cache
        def view() -> SolveView:  # made at the first status, while the daemon works (or on an early failure)
            from .solve_view import SolveView

            return SolveView(target.name, plan.lowered, None if quiet else self.reporter,
                             platforms=self.settings.platforms, host=self.host_platform)

        named = tuple(names) if output is None and self.stores_images else ()
        exporter = self.exporter(unit, output, named)
        # Inline cache metadata is an export of its own here (the engine's /build turns the
        # BUILDKIT_INLINE_CACHE build arg into one; Control.Solve is told directly).
        cache = self.settings.cache_to
        cache_exports = [] if cache is None else [CacheEntry("inline")] if cache.type == "inline" else [
            CacheEntry(cache.type, {"ref": cache.ref, "mode": cache.mode})]
        # BuildKit 0.8 reads the context from `context` whatever `contextkey` says, so each solve
        # has a session of its own; the shared key per folder and unit keeps their files apart.
        # The session is made and served once the solve is sent (the daemon waits for it):
        # what serves it is imported meanwhile, while the daemon starts the solve.
        # (What it reads is read now: BuildKit waits for the session a few seconds, no more.)
        allow = self.allowed(plan)
        serving = Serving(functools.partial(
            dockerfile_session, context=str(self.project.context), allow=allow,
            dockerfile=self.sent_text(plan.text).encode(),
            files={path: (file.data, file.mode) for path, file in plan.lowered.files.items()},
            files_time_ns=self.written_ns(), root_under=under,
            shared_key=shared_key(str(self.project.context), unit.name),
            secrets=[(s.id, s.path, s.env) for s in self.settings.secrets],
            ssh={s.id: s.paths[0] for s in self.settings.ssh}, registry_hosts=self.registry_hosts(unit),
            context_request=None if plan.lowered.files else self.context_request(unit, allow)))
        attrs = dockerfile_attrs(
            target=target.name, build_args=args, no_cache=self.settings.no_cache and not unit.needs,
            network=self.network(), platform=",".join(self.settings.platforms) or None)
        control = self.control()  # cannot reach it: that one line, not a stage's failure
        cancel = threading.Event()
        with self._lock:
            self._cancels.add(cancel)
        try:
            with self.engine.errors(f"stage '{target.name}'", where=self.where, line=target.line):
                answer = control.solve(
                    serve=serving, frontend_attrs=attrs, exporter=exporter,
                    cache_imports=[CacheEntry("registry", {"ref": ref}) for ref in self.settings.cache_from],
                    cache_exports=cache_exports,
                    entitlements=["network.host"] if self.settings.network == "host" else [],
                    on_status=lambda status: view().feed(status), cancel=cancel)
        except SolveFailed as exc:
            view().finish()
            if any(marker in exc.details for marker in LOST_INPUT):
                raise LostInput(exc.details, view().failure(exc.details, self.where, target.line)) from exc
            raise view().failure(exc.details, self.where, target.line) from exc
        except EngineError as exc:
            view().finish()
            if isinstance(exc, Interrupted):
                raise
            raise EngineError(f"stage '{target.name}': {exc.message}", where=self.where, line=target.line) from exc
        finally:
            with self._lock:
                self._cancels.discard(cancel)
                self._solves_over.notify_all()
            view().stop_watching()  # (a Ctrl-C passes the branches above)
        view().finish()
        image_id = answer.get("containerimage.digest", "")
        if not image_id and output is None and self.stores_images:
            raise step_failed(target.name, "BuildKit exported no image", where=self.where, line=target.line)
        return Sent(image_id, view().progress.stage_seconds(), view().conclude(), named)

    # --- through POST /build?version=2, with a tar of the context -----------------------------
    def _solve_with_tar(self, unit: Unit, plan: Plan, args: Mapping[str, str], names: Sequence[str] = ()) -> Sent:
        from ..engine import buildkit as engine_buildkit
        from .solve_view import SolveView, plain_paths, reason

        target = unit.stage
        for stage in unit.stages:
            for mount in stage.mounts:
                if mount.type in ("secret", "ssh"):
                    line = next(i.line for i in stage.instructions if mount in getattr(i, "mounts", ()))
                    raise UserError(f"RUN --mount=type={mount.type} needs a BuildKit session, and this build has none "
                                    "(see the line above)", where=self.where, line=line)
        prefix = ""
        if not any(self.external_triggers(s) for s in unit.stages):
            # A tar context gets no .dockerignore from BuildKit: the context's files go under a
            # folder of their own so that our Dockerfile is not part of `COPY . .` (the ONBUILD
            # triggers of an external base image read the context as the user laid it out).
            prefix = CONTEXT_PREFIX
        lowered = multi_stage(self.graph, unit.stages, context_prefix=prefix, build_args=self.args_for(unit.stages),
                              image_config=self.image_config)
        view = SolveView(target.name, lowered, self.reporter)
        build_id = f"compimg-{os.urandom(16).hex()}"
        # A solve after another of this run (`unit.needs`) reads that one's fresh results
        # from the cache even under --no-cache: they were made now, and it must be the same image.
        no_cache = self.settings.no_cache and not unit.needs
        with self.reading_context(target):
            archive = context.archive(str(self.project.context), self.sent_text(lowered.text), plan.paths,
                                      prefix=prefix,
                                      files=lowered.files, files_time=self.written_ns() / 1e9)
        with self._lock:
            self._running.add(build_id)
        try:
            with self.engine.errors(f"stage '{target.name}'", where=self.where, line=target.line):
                result = engine_buildkit.solve(
                    self.engine, archive, dockerfile=context.DOCKERFILE_IN_CONTEXT, target=target.name,
                    build_args=args, no_cache=no_cache,
                    network=engine_buildkit.network_for(self.engine, self.settings.network),
                    cache_from=self.settings.cache_from, build_id=build_id, on_status=view.feed,
                    tags=[self.project.local_ref(target.name), *names])
        except BuildRejected as exc:
            raise step_failed(target.name, "the engine refused the build: " + plain_paths(reason(exc.engine_message)),
                              where=self.where, line=target.line) from exc
        finally:
            with self._lock:
                self._running.discard(build_id)
            archive.close()
            view.finish()
        if result.image_id is None:
            failure = view.failure(result.error, self.where, target.line)
            if any(marker in (result.error or "") for marker in LOST_INPUT):
                raise LostInput(result.error or "", failure)
            raise failure
        return Sent(result.image_id, view.progress.stage_seconds(), view.conclude(), tuple(names))

    def cancel(self) -> str:
        with self._lock:
            running, cancels = list(self._running), list(self._cancels)
        for event in cancels:
            event.set()
        if running:
            from ..engine import buildkit as engine_buildkit
        for build_id in running:
            with contextlib.suppress(Exception):  # the connection closing cancels it too
                engine_buildkit.cancel(self.engine, build_id)
        with self._lock:  # the solves end within 0.1 s once cancelled, and close their sessions
            self._solves_over.wait_for(lambda: not self._cancels, timeout=CANCEL_WAIT)  # (and its folders)
        return super().cancel()


CANCEL_WAIT = 5.0  # seconds Ctrl-C waits for the cancelled solves to close their sessions


# What BuildKit says when something else on the engine (`docker builder prune`, another
# client's cleanup) took away what this build had sent it: worth sending again, once.
LOST_INPUT = ("failed to read downloaded context", "context not found", "no active session", "session not found")


class LostInput(Exception):
    """The solve failed because BuildKit lost its input; `error` is the line if it happens twice."""

    def __init__(self, text: str, error: EngineError) -> None:
        super().__init__(text)
        self.text = " ".join(text.split())[:160]
        self.error = error


def shared_key(folder: str, unit: str) -> str:
    """The session's shared key for a unit's context folder: the same on every run on this
    machine, so BuildKit diffs against what it received last time and only changes travel."""
    key = f"{socket.gethostname()}:{os.path.realpath(folder)}:{unit}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # (a folder's name is bytes)
