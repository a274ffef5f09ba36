"""Scenarios recorded from the real engine (tests/record_engine.py) and replayed by the fast
tests (tests/fake_engine.py). Each runs the package's own code against `world.engine`: the
recorder points it at the real engine through a recording proxy, a test at the replay.

A scenario does the same thing in both modes and returns what a user would see (the lines
printed, images named, errors, files written) in a `Seen`; `world.mark()` splits the fake's
log of requests into the scenario's steps. Whatever a scenario's inputs are, they are the
same at every run (file contents and modes, Dockerfiles), so what the code sends matches
what was recorded; the values that vary (folders, names, IDs) are placeholders (see
fake_engine).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.engine.client import Engine
from invoke_compimg.errors import EngineError, UserError
from invoke_compimg.procs import owner
from invoke_compimg.progress import PlainReporter

REPLAY_REGISTRY = "127.0.0.1:5999"  # any address: the replay binds it from the requests


@dataclass
class World:
    """Where a scenario runs: an engine (recorded or replayed), a folder for its projects."""

    engine: Engine
    folder: Path
    server: Any  # fake_engine.RecordingProxy or fake_engine.FakeEngine
    recording: bool
    registry: str = REPLAY_REGISTRY
    exact: dict[str, str] = field(default_factory=dict)  # volatile value -> placeholder (recording)
    projects: list[Project] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # refs the scenario made outside its projects

    def __post_init__(self) -> None:
        self.volatile(owner(), "{{host}}:{{pid}}")
        self.volatile(self.registry, "{{registry}}")

    def volatile(self, value: str, placeholder: str) -> None:
        self.exact[value] = placeholder

    def project(self, dockerfile: str, files: dict[str, str] | None = None, name: str = "app") -> Project:
        """A project folder with fixed contents and modes: its inputs digests are the recorded ones."""
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        self.write(folder, {"Dockerfile": dockerfile, **(files or {})})
        project = Project(folder / "Dockerfile", folder)
        self.volatile(project.slug, "{{project}}" if not self.projects else f"{{{{project:{len(self.projects) + 1}}}}}")
        self.projects.append(project)
        return project

    @staticmethod
    def write(folder: Path, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            path.write_text(text)
            path.chmod(0o644)

    def unique(self) -> str:
        """A repository name of this run only."""
        value = f"compimg-fake-{uuid.uuid4().hex[:8]}"
        self.volatile(value, "{{unique}}")
        self.made.append(value)
        return value

    def dead_owner(self) -> str:
        """The owner label of a process that has ended (a killed run's leftover)."""
        if not self.recording:
            known = self.server.known
            return f"{known['host']}:{known['deadpid']}"
        ended = subprocess.Popen(["true"])
        ended.wait()
        value = f"{socket.gethostname()}:{ended.pid}"
        self.volatile(value, "{{host}}:{{deadpid}}")
        return value

    def mark(self) -> int:
        """Where the requests of the next step start in the fake's log."""
        return 0 if self.recording else len(self.server.log)

    def interrupt(self, method: str, path: str, after: int, hold_until: str, containing: bytes | None = None) -> None:
        """Ctrl-C once `after` chunks of that stream went out, and one held `containing` (the
        stream waits for `hold_until`)."""
        def ctrl_c() -> None:
            time.sleep(0.3)  # as a user would, having read the line: the code shows what came first
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        self.server.when(method, path, after, ctrl_c, hold_until=hold_until, containing=containing)

    def lose_sessions(self, count: int) -> None:
        """The next `count` BuildKit sessions never reach the engine (recording; the replay
        has what the engine answered)."""
        if self.recording:
            self.server.drop_sessions(count)


class Seen(dict[str, Any]):
    """What a scenario saw, by name (`seen.out`, `seen["out"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def reporter() -> tuple[PlainReporter, io.StringIO]:
    out = io.StringIO()
    return PlainReporter(out, out), out


def build_run(world: World, project: Project, **settings: Any) -> tuple[Any, io.StringIO]:
    from invoke_compimg.run import BuildRun

    shown, out = reporter()
    return BuildRun(project, Settings(**settings), shown, engine=world.engine), out


def attempt(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except (UserError, KeyboardInterrupt) as exc:
        return None, exc


def builder_for(world: World, project: Project, kind: str, **settings: Any) -> tuple[Any, io.StringIO]:
    from invoke_compimg.builders import BuildKitBuilder, ClassicBuilder
    from invoke_compimg.building.reuse import ExternalImages

    shown, out = reporter()
    chosen = BuildKitBuilder if kind == "buildkit" else ClassicBuilder
    return chosen(world.engine, project, project.graph, Settings(builder=kind, **settings), shown,
                  ExternalImages()), out


def send(builder: Any, stage: str, *, text: Callable[[str], str] | None = None) -> tuple[Any, BaseException | None]:
    """Plan and send the unit that builds `stage` alone; `text` rewrites the Dockerfile sent."""
    from dataclasses import replace

    unit = builder.unit_for(builder.graph.stage(stage))
    plan = builder.plan(unit, {})
    if text is not None:
        plan = replace(plan, text=text(plan.text))
    return attempt(lambda: builder.send(unit, plan, builder.args_for(unit.stages)))


# --- the scenarios -------------------------------------------------------------------------------

TWO_STAGES = """\
NAME build
FROM busybox
COPY src.txt /src.txt
RUN mkdir -p /out && cp /src.txt /out/app && echo compiled >&2

NAME run
FROM busybox
COPY build:/out/app /app
CMD ["cat", "/app"]
"""


def run_twice_and_change(world: World, builder: str) -> Seen:
    """BuildRun: a cold build with tags, the same build again in this process (memo), in a
    fresh process (reuse: no build request), after an edit (rebuilt, old images retired),
    and with --no-cache."""
    seen = Seen(marks=[])
    unique = world.unique()
    # The file names this run (a placeholder in the recording): a cold build is cold on any engine
    project = world.project(TWO_STAGES, {"src.txt": f"v1 {unique}\n", "unused.txt": "not read\n"})
    tags = {"run": (f"{unique}:run",)} | ({"build": (f"{unique}:build",)} if builder == "buildkit" else {})
    for step, (fresh, files, no_cache) in enumerate([(False, None, False), (False, None, False), (True, None, False),
                                                     (True, {"src.txt": f"v2 {unique}\n"}, False),
                                                     (True, None, True)]):
        if files:
            world.write(project.context, files)
        if fresh:  # a new process: nothing remembered but what the engine holds
            project = Project(project.dockerfile, project.context)
        seen.marks.append(world.mark())
        run, out = build_run(world, project, builder=builder, tags=tags, no_cache=no_cache)
        ids = run.build(["run"])
        run.summary("run")
        seen[f"step{step}"] = Seen(ids=ids, out=out.getvalue(), rows=run.rows())
    seen.marks.append(world.mark())
    seen.project = project
    seen.unique = unique
    return seen


def run_classic(world: World) -> Seen:
    return run_twice_and_change(world, "classic")


def run_buildkit(world: World) -> Seen:
    return run_twice_and_change(world, "buildkit")


FAILING = """\
NAME build
FROM busybox
RUN echo before-failure && echo to-stderr >&2 && exit 3

NAME run
FROM busybox
COPY build:/x /x
"""
MISSING_BASE = "NAME build\nFROM compimg-no-such-image:1\nRUN true\n"
# A flag newer frontends take (so our parser does) and this engine's Dockerfile 1.2 does not.
HEALTHCHECK = "NAME build\nFROM busybox\n\nHEALTHCHECK --start-interval=1s CMD true\nRUN echo hi\n"


def classic_errors(world: World) -> Seen:
    """The classic builder's failures: a failing RUN, a base image the engine cannot pull, a
    Dockerfile the engine refuses (HTTP 400)."""
    seen = Seen()
    failing = world.project(FAILING, name="failing")
    builder, out = builder_for(world, failing, "classic")
    seen.failing = (*send(builder, "build"), out.getvalue())
    missing = world.project(MISSING_BASE, name="missing")
    builder, out = builder_for(world, missing, "classic")
    seen.missing = (*send(builder, "build"), out.getvalue())
    refused = world.project("NAME build\nFROM busybox\nRUN true\n", name="refused")
    builder, out = builder_for(world, refused, "classic")
    seen.refused = (*send(builder, "build", text=lambda text: text + "FROBNICATE now\n"), out.getvalue())
    return seen


def buildkit_errors(world: World) -> Seen:
    """BuildKit's failures: a failing RUN in a stage the target needs, a frontend error in the
    file sent, a base image BuildKit cannot resolve, a solve the engine refuses (through the
    gRPC API a frontend error; `/build` answers HTTP 500). Recorded through a session, and
    (buildkit_errors_tar) from an engine that refuses `POST /grpc`: a tar, one warning."""
    from invoke_compimg.engine import buildkit as engine_buildkit

    seen = Seen()
    failing = world.project(FAILING, name="failing")
    builder, out = builder_for(world, failing, "buildkit")
    seen.failing = (*send(builder, "run"), out.getvalue())
    frontend = world.project(HEALTHCHECK, name="frontend")
    builder, out = builder_for(world, frontend, "buildkit")
    seen.frontend = (*send(builder, "build"), out.getvalue())
    missing = world.project(MISSING_BASE, name="missing")
    builder, out = builder_for(world, missing, "buildkit")
    seen.missing = (*send(builder, "build"), out.getvalue())
    refused = world.project("NAME build\nFROM busybox\nRUN true\n", name="refused")
    builder, out = builder_for(world, refused, "buildkit", network="my-network")
    # What compimg refuses itself, let through to the engine, which refuses it for real.
    with mock.patch.object(engine_buildkit, "network_for", lambda engine, requested: requested):
        seen.refused = (*send(builder, "build"), out.getvalue())
    return seen


SLOW = "NAME build\nFROM busybox\nRUN echo started && sleep 30 && echo never\n"


def buildkit_interrupt(world: World) -> Seen:
    """Ctrl-C while BuildKit runs a long RUN: the Solve call is cancelled (and with it the build)."""
    project = world.project(SLOW)
    run, out = build_run(world, project, builder="buildkit", no_cache=True)  # the RUN runs, never cached
    # Once the RUN said `started` (a StatusResponse carrying its log line); without a session
    # (buildkit_interrupt_tar), nine chunks into the /build stream
    world.interrupt("GRPC", r"Control/Status$", after=1, hold_until=r"^CANCEL .*Control/Solve$",
                    containing=b"started\n")
    world.interrupt("POST", r"/build$", after=9, hold_until=r"/build/cancel$")
    ids, error = attempt(lambda: run.build(["build"]))
    return Seen(ids=ids, error=error, out=out.getvalue())


EXPORTED = """\
NAME build
FROM busybox
ARG GREETING
COPY src.txt /src.txt
RUN --mount=type=secret,id=token mkdir -p /out/sub && cp /src.txt /out/app && echo "$GREETING" > /out/sub/greeting \\
    && wc -c < /run/secrets/token > /out/sub/token-size && ln -s app /out/link
RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK"

NAME dist
FROM scratch
COPY build:/out /
"""


def buildkit_session(world: World) -> Seen:
    """What only a session does: a build arg, a secret read when asked, an ssh agent checked,
    `--output` (a local export of the target's files), extract-artifact through a local export
    (a path the image has, one it lacks), the workers, and a solve whose session BuildKit lost
    (retried once; lost twice, the line)."""
    from invoke_compimg.building.specs import OutputSpec, SecretSpec, SshSpec

    seen = Seen(marks={})
    secret = world.folder / "token.txt"
    secret.write_text("s3cret\n")
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # where an agent would listen: it is only checked
    agent.bind(str(world.folder / "agent.sock"))
    agent.listen(8)
    unique = world.unique()  # in a file the build reads: its steps run on any engine
    project = world.project(EXPORTED, {"src.txt": f"v1 {unique}\n", "unused.txt": "not read\n"})
    common: dict[str, Any] = {"builder": "buildkit", "build_args": {"GREETING": "hello"},
                              "secrets": (SecretSpec("token", path=str(secret)),),
                              "ssh": (SshSpec("default", (str(world.folder / "agent.sock"),)),)}
    seen.marks["output"] = world.mark()
    dest = world.folder / "dest"
    run, out = build_run(world, project, output=OutputSpec("local", str(dest / "out")), **common)
    seen.output = Seen(ids=run.build(["dist"]), out=out.getvalue(), rows=run.rows())
    seen.marks["extract"] = world.mark()
    run, out = build_run(world, project, **common)
    ids = run.build(["build"])

    def extract(path: str, into: str) -> tuple[list[str] | None, BaseException | None]:
        try:
            return run.extract("build", ids["build"], path, str(dest / into)), None
        except (FileNotFoundError, UserError) as exc:  # UserError: EngineError too
            return None, exc

    seen.extract = Seen(ids=ids, found=extract("/out", "extracted"), missing=extract("/nope", "none"),
                        out=out.getvalue())
    seen.marks["workers"] = world.mark()
    seen.workers = world.engine.control().list_workers()
    seen.marks["lost"] = world.mark()
    world.lose_sessions(1)
    run, out = build_run(world, Project(project.dockerfile, project.context), no_cache=True, **common)
    seen.lost = Seen(ids=run.build(["build"]), out=out.getvalue())
    seen.marks["lost_twice"] = world.mark()
    world.lose_sessions(2)
    run, out = build_run(world, Project(project.dockerfile, project.context), no_cache=True, **common)
    ids, error = attempt(lambda: run.build(["build"]))
    seen.lost_twice = Seen(ids=ids, error=error, out=out.getvalue())
    seen.marks["end"] = world.mark()
    agent.close()
    seen.dest = dest
    seen.project = project
    seen.unique = unique
    return seen


SERVICE_APP = """\
NAME build
FROM busybox
COPY greeting.txt /src/
RUN --mount=type=secret,id=token cat /src/greeting.txt /run/secrets/token > /out.txt

NAME artifact
FROM scratch
COPY build:/out.txt /
"""


def buildkit_service(world: World) -> Seen:
    """Builds on a BuildKit service (`--buildkit-host`) instead of the engine's BuildKit: files
    out with a secret, then a build that keeps nothing (one line says so). The recording's
    service is the engine's own Control behind a unix socket of the recording proxy (a
    buildkitd cannot be installed here), as tests/control_bridge.py stands in for one."""
    from invoke_compimg.building.specs import OutputSpec, SecretSpec, ServiceSpec

    seen = Seen(marks={})
    unique = world.unique()  # in a file the build reads: its steps run on any engine
    project = world.project(SERVICE_APP, {"greeting.txt": f"hello from the service {unique}\n"})
    secret = world.folder / "token.txt"
    secret.write_text("and a secret\n")
    seen.address = world.server.service_address()
    # The stand-in is the engine's BuildKit, which has no `bridge` network here.
    common: dict[str, Any] = {"builder": "buildkit", "buildkit": ServiceSpec(seen.address), "network": "none",
                              "secrets": (SecretSpec("token", path=str(secret)),)}
    seen.marks["output"] = world.mark()
    run, out = build_run(world, project, output=OutputSpec("local", str(world.folder / "out")), **common)
    with run:
        seen.output = Seen(ids=run.build(["artifact"]), out=out.getvalue(), rows=run.rows())
    seen.marks["kept"] = world.mark()
    run, out = build_run(world, project, **common)
    with run:
        seen.kept = Seen(ids=run.build(["artifact"]), out=out.getvalue(), rows=run.rows())
    seen.marks["end"] = world.mark()
    seen.dest = world.folder / "out"
    seen.unique = unique
    return seen


ARTIFACTS = """\
NAME build
FROM busybox
RUN mkdir -p /out/sub && echo alpha > /out/a.txt && echo beta > /out/sub/b.txt && ln -s a.txt /out/link
"""


def artifacts(world: World) -> Seen:
    """Copy files out of a built image (a leftover of a killed run reaped first), a path the
    image lacks, then clean the project."""
    from invoke_compimg.engine import containers
    from invoke_compimg.host import artifacts as host_artifacts

    seen = Seen()
    project = world.project(ARTIFACTS)
    run, out = build_run(world, project, builder="classic")
    image_id = run.build(["build"])["build"]
    seen.image_id = image_id
    leftover = world.engine.api.create_container(
        "busybox", command=containers.NEVER_RUN, labels={containers.LABEL_TEMPORARY: world.dead_owner(),
                                                         containers.LABEL_PROJECT: project.slug})
    seen.leftover = leftover["Id"]
    destination = world.folder / "dest"
    shown, out = reporter()
    seen.tree = host_artifacts.copy_out(world.engine, project, "build", image_id, "/out", str(destination / "tree"),
                                        shown)
    seen.file = host_artifacts.copy_out(world.engine, project, "build", image_id, "/out/a.txt",
                                        str(destination / "file"), shown)
    seen.missing = attempt(lambda: host_artifacts.copy_out(world.engine, project, "build", image_id, "/nope",
                                                           str(destination / "none"), shown))
    seen.out = out.getvalue()
    cleaned = io.StringIO()
    seen.cleaned = host_artifacts.clean(project.slug, world.engine, cleaned)
    seen.clean_out = cleaned.getvalue()
    seen.destination = destination
    seen.repository = project.repository
    return seen


def shell(world: World) -> Seen:
    """`compimg.shell`'s container: output on both streams, an exit status."""
    from invoke_compimg.engine import images
    from invoke_compimg.host import terminal

    image_id = images.image_id_of(world.engine, "busybox")
    stdout, stderr = io.TextIOWrapper(io.BytesIO()), io.TextIOWrapper(io.BytesIO())
    with open(os.devnull) as nothing, contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "stdin", nothing))
        stack.enter_context(mock.patch.object(sys, "stdout", stdout))
        stack.enter_context(mock.patch.object(sys, "stderr", stderr))
        status = terminal.run_shell(world.engine, str(image_id),
                                    ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"], "fake-shell")
    return Seen(status=status, stdout=stdout.buffer.getvalue(), stderr=stderr.buffer.getvalue())


def engine_calls(world: World) -> Seen:
    """engine/images.py and containers.py one call at a time, the engine's refusals included."""
    from invoke_compimg.engine import buildkit as engine_buildkit
    from invoke_compimg.engine import containers, images

    seen = Seen(lines=[])
    engine = world.engine
    unique = world.unique()
    seen.kind = engine.kind
    seen.missing = images.inspect(engine, "compimg-no-such-image:1")
    busybox = images.image_id_of(engine, "busybox")
    seen.busybox = busybox
    seen.size = images.image_size(engine, str(busybox))
    seen.history = images.onbuild_history(engine, str(busybox))
    images.tag(engine, str(busybox), f"{unique}:one")
    seen.listed = images.tags_in_repository(engine, unique)
    seen.in_use = images.remove_unnamed(engine, str(busybox))  # named: the engine answers 409
    images.untag(engine, f"{unique}:one")
    images.untag(engine, f"{unique}:one")  # already gone: no error
    seen.tag_missing = attempt(lambda: images.tag(engine, "sha256:" + "0" * 64, f"{unique}:two"))[1]
    seen.pull_missing = attempt(lambda: images.pull(engine, "compimg-no-such-image:1"))[1]
    seen.cache = images.usable_cache_sources(engine, ("compimg-no-such-cache:1", "busybox"), seen.lines.append)
    seen.cache_again = images.usable_cache_sources(engine, ("compimg-no-such-cache:1",), seen.lines.append)
    seen.network = engine_buildkit.network_for(engine, None)
    seen.network_again = engine_buildkit.network_for(engine, "default")
    seen.labelled = containers.with_label(engine, f"compimg.project={unique}")
    containers.remove(engine, "compimg-no-such-container")
    with containers.stopped_container(engine, str(busybox), unique) as container:
        seen.container = container
        seen.no_path = attempt(lambda: _archive_names(engine, container, "/no/such/path"))[1]
        seen.etc = _archive_names(engine, container, "/etc/hostname")
    engine.close()
    return seen


def _archive_names(engine: Engine, container: str, path: str) -> list[str]:
    from invoke_compimg.engine import containers

    try:
        with containers.archive_of(engine, container, path) as archive:
            return [member.name for member in archive]
    except FileNotFoundError as exc:
        raise UserError(f"no {exc}") from exc


def registry(world: World) -> Seen:
    """Pulls of missing base images (one the registry has, one it lacks) and --push."""
    from invoke_compimg.building import push
    from invoke_compimg.engine import images

    seen = Seen()
    engine = world.engine
    unique = world.unique()
    base = f"{world.registry}/{unique}/base:1"
    images.tag(engine, str(images.image_id_of(engine, "busybox")), base)
    seen.pushed_base = images.push(engine, base, lambda line: None)
    images.untag(engine, base)
    project = world.project(f"NAME build\nFROM {base}\nRUN echo on-pulled-base && : {unique}\n")  # never cached
    target = f"{world.registry}/{unique}/app:1"
    run, out = build_run(world, project, builder="buildkit", tags={"build": (target,)})
    seen.mark_build = world.mark()
    ids = run.build(["build"])
    seen.ids = ids
    seen.mark_push = world.mark()
    shown, pushed_out = reporter()
    refs = push.plan(run.settings.tags, ids, "build", False)
    seen.pushed = push.push(engine, refs, shown, layers=True)
    seen.out = out.getvalue()
    seen.push_out = pushed_out.getvalue()
    seen.mark_missing = world.mark()
    missing = world.project(f"NAME build\nFROM {world.registry}/{unique}/missing:1\nRUN true\n", name="missing")
    run, out = build_run(world, missing, builder="buildkit")
    seen.missing = attempt(lambda: run.build(["build"]))[1]
    seen.missing_out = out.getvalue()
    world.made += [base, target]
    return seen


@contextlib.contextmanager
def terminal(world: World) -> Iterator[tuple[io.TextIOWrapper, io.TextIOWrapper]]:
    """A process's view for the Invoke glue: DOCKER_HOST names this world's engine, no
    INVOKE_COMPIMG_* of the caller's, stdin empty, stdout and stderr captured."""
    stdout, stderr = io.TextIOWrapper(io.BytesIO(), write_through=True), io.TextIOWrapper(io.BytesIO(),
                                                                                            write_through=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_COMPIMG_", "COMPIMG_"))}
    environment["DOCKER_HOST"] = world.server.address
    with open(os.devnull) as nothing, contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, environment, clear=True))
        stack.enter_context(mock.patch.object(sys, "stdin", nothing))
        stack.enter_context(mock.patch.object(sys, "stdout", stdout))
        stack.enter_context(mock.patch.object(sys, "stderr", stderr))
        yield stdout, stderr


def text_of(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode()  # type: ignore[attr-defined]


def tasks(world: World) -> Seen:
    """The Invoke glue on an engine: the Python API's operations, a stage's own task, the
    `compimg` command, each with the engine named by DOCKER_HOST."""
    from invoke import Config, Context

    import invoke_compimg
    from invoke_compimg.tasks import cli

    seen = Seen()
    project = world.project(TWO_STAGES, {"src.txt": "v1\n"})
    unique = world.unique()
    folder = project.context
    c = Context(Config(overrides={"compimg": {"builder": "classic", "progress": "plain"}}))
    with terminal(world) as (stdout, stderr):
        seen.ids = invoke_compimg.build(c, tag=[f"run={unique}:run"], base=folder)
        seen.stage = invoke_compimg.build_stage(c, "build", base=folder)
        seen.assembled = invoke_compimg.assemble(c, base=folder)
        seen.names = invoke_compimg.extract_artifact(c, "build:/out/app", dest=str(world.folder / "dest"), base=folder)
        seen.missing = attempt(lambda: invoke_compimg.extract_artifact(c, "build:/nope", dest=str(world.folder / "x"),
                                                                        base=folder))[1]
        ns = invoke_compimg.collection(base=folder)
        seen.task = ns.collections["stage"].tasks["run"](c)
        seen.shell = attempt(lambda: invoke_compimg.shell(c, "run", cmd="cat /app; exit 4", base=folder))[1]
        seen.out, seen.err = text_of(stdout), text_of(stderr)
    with terminal(world) as (stdout, stderr), mock.patch.object(sys, "argv", ["compimg", "--context", str(folder),
                                                                             "build", "--progress", "quiet"]):
        previous = signal.getsignal(signal.SIGINT)
        seen.cli_exit = None
        try:
            cli.main()
        except SystemExit as exc:
            seen.cli_exit = exc.code
        finally:
            signal.signal(signal.SIGINT, previous)
        seen.cli_out, seen.cli_err = text_of(stdout), text_of(stderr)
    with terminal(world) as (stdout, stderr):
        invoke_compimg.clean(c, base=folder)
        seen.clean_out = text_of(stdout)
    seen.dest = world.folder / "dest"
    seen.project = project
    return seen


SCENARIOS: dict[str, Callable[[World], Seen]] = {
    "tasks": tasks,
    "run_classic": run_classic,
    "run_buildkit": run_buildkit,
    "run_buildkit_tar": run_buildkit,
    "classic_errors": classic_errors,
    "buildkit_errors": buildkit_errors,
    "buildkit_errors_tar": buildkit_errors,
    "buildkit_interrupt": buildkit_interrupt,
    "buildkit_interrupt_tar": buildkit_interrupt,
    "buildkit_session": buildkit_session,
    "buildkit_service": buildkit_service,
    "artifacts": artifacts,
    "shell": shell,
    "engine_calls": engine_calls,
    "registry": registry,
}
NEEDS_REGISTRY = {"registry"}
# Recorded from an engine that refuses `POST /grpc` (as a proxy in front of it may): BuildKit
# solves with a tar through `POST /build`, one warning line says why.
REFUSES_GRPC = {"run_buildkit_tar", "buildkit_errors_tar", "buildkit_interrupt_tar"}


def failure(seen: Any, name: str) -> tuple[str, str]:
    """(the error's line, what was shown before it) of one send of a replayed scenario (`seen`)."""
    result, error, shown = seen[name]
    assert result is None and isinstance(error, EngineError), (result, error)
    text = str(error)
    assert text.splitlines() == [text]  # one line, whatever the engine said
    return text, shown


@contextlib.contextmanager
def replayed(name: str, folder: Path, *, all_used: bool = True,
             arrange: Callable[[Any], None] | None = None) -> Iterator[tuple[Seen, Any]]:
    """Run scenario `name` against its recording: (what it saw, the fake engine). The fake
    is verified when the block ends: a request the recording lacks fails the test.
    `arrange(fake)` runs first (a fault to inject: `fake.cut(...)`)."""
    from fake_engine import FakeEngine

    fake = FakeEngine(name)
    if arrange is not None:
        arrange(fake)
    engine = fake.engine()
    try:
        world = World(engine, folder, fake, recording=False)
        seen = SCENARIOS[name](world)
        yield seen, fake
    finally:
        engine.close()
        fake.close()
    fake.verify(all_used=all_used)
