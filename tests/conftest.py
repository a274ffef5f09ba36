"""Shared fixtures. Engine tests (marked `engine`) run against a real Docker engine;
without one they are skipped locally and fail under CI=true."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

import pytest

ROOT = Path(__file__).resolve().parent.parent
_engine_problem: list[str | None] = []


def _engine_unavailable() -> str | None:
    if not _engine_problem:
        import docker

        try:
            docker.APIClient(version="auto", **docker.utils.kwargs_from_env()).ping()
            _engine_problem.append(None)
        except Exception as exc:
            _engine_problem.append(f"no Docker engine ({exc}); run scripts/engine")
    return _engine_problem[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("engine") is None:
        return
    problem = _engine_unavailable()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


# End-to-end modules that run once per builder, so a builder-specific failure names it.
BOTH_BUILDERS = {"test_build", "test_tasks", "test_faults", "test_correctness", "test_habits"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = any(m.name == "parametrize" and "builder" in str(m.args[0]) for m in metafunc.definition.iter_markers())
    if (metafunc.definition.get_closest_marker("engine") and metafunc.module.__name__ in BOTH_BUILDERS
            and not explicit):
        metafunc.parametrize("builder", ["classic", "buildkit"], indirect=True)


@pytest.fixture(autouse=True)
def _no_early_engine_answers() -> Iterator[None]:
    """A test's building task asks its engine's /version early (engine.client.ask_early): an
    answer no Engine took is not left for the next test's."""
    yield
    from invoke_compimg.engine import client

    client._early_versions.clear()


@pytest.fixture(autouse=True)
def builder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The builder an end-to-end test runs with (both, in BOTH_BUILDERS modules): `compimg`
    and `invoke` subprocesses and the in-process helpers read INVOKE_COMPIMG_BUILDER."""
    name = getattr(request, "param", None)
    if name is not None:
        monkeypatch.setenv("INVOKE_COMPIMG_BUILDER", str(name))
    return name


@pytest.fixture(scope="session")
def api():  # type: ignore[no-untyped-def]
    import docker

    return docker.APIClient(version="auto", **docker.utils.kwargs_from_env())


@pytest.fixture(scope="session")
def engine():  # type: ignore[no-untyped-def]
    """The engine as our code talks to it (`invoke_compimg.engine.client.Engine`)."""
    from invoke_compimg.engine.client import Engine

    with Engine() as found:
        yield found


@pytest.fixture
def unique() -> str:
    """A name no other test (or run) uses, valid as an image repository."""
    return f"compimg-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_project(tmp_path: Path, request: pytest.FixtureRequest, unique: str) -> Iterator[Callable[..., object]]:
    """Write a Dockerfile (and files) into a fresh folder and return its Project; every
    image and container the project's builds made, and every tag starting with the test's
    unique name, is removed afterwards. Needs no engine: a test without the `engine` marker
    builds nothing, so there is nothing to remove."""
    from invoke_compimg.building.project import Project
    from invoke_compimg.host.artifacts import clean

    made: list[Project] = []

    def make(dockerfile: str, files: dict[str, str | bytes] | None = None, name: str = "proj") -> Project:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Dockerfile").write_text(dockerfile)
        for rel, content in (files or {}).items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        project = Project(folder / "Dockerfile", folder)
        made.append(project)
        return project

    yield make
    if request.node.get_closest_marker("engine") is None or _engine_unavailable():
        return
    import io

    import docker

    from invoke_compimg.engine.client import Engine

    api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    with Engine() as engine:
        for project in made:
            clean(project.slug, engine, io.StringIO())
    for image in api.images():
        for ref in image.get("RepoTags") or []:
            if ref.startswith(unique):
                api.remove_image(ref, force=True)


COMPIMG = [sys.executable, "-c", "from invoke_compimg.tasks.cli import run; run()"]
INVOKE = [sys.executable, "-m", "invoke"]


def cli(program: str, args: Sequence[str], cwd: Path | str, env: Mapping[str, str | None] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`compimg ARGS` or `invoke ARGS` as a user runs them: a real subprocess in `cwd`, with
    this process's environment and `env` (a None value unsets that variable), no standard
    input (as CI has none), stopped after `timeout` seconds. The one runner of the tests."""
    command = {"compimg": COMPIMG, "invoke": INVOKE}[program]
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run([*command, *args], cwd=cwd, text=True, capture_output=True, timeout=timeout,
                          env=environ, stdin=subprocess.DEVNULL)


class FakeReporter:
    """A Reporter that records every event, as (method, *arguments as text), and prints nothing."""

    live = False

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def _record(self, name: str, *args: object) -> None:
        self.events.append((name, *map(str, args)))

    def stage_started(self, stage: str) -> None:
        self._record("stage_started", stage)

    def step(self, stage: str, text: str) -> None:
        self._record("step", stage, text)

    def step_done(self, stage: str, text: str, seconds: float | None, cached: bool) -> None:
        self._record("step_done", stage, text, seconds, cached)

    def output(self, stage: str, line: str) -> None:
        self._record("output", stage, line)

    def stage_finished(self, stage: str, image_id: str, seconds: float, outcome: str) -> None:
        self._record("stage_finished", stage, image_id, seconds, outcome)

    def stage_failed(self, stage: str, message: str) -> None:
        self._record("stage_failed", stage, message)

    def note(self, text: str, stage: str | None = None) -> None:
        self._record("note", text, stage)

    def warning(self, text: str) -> None:
        self._record("warning", text)

    def table(self, rows: Sequence[object], final: str | None) -> None:
        self._record("table", len(rows), final)

    def result(self, image_id: str) -> None:
        self._record("result", image_id)

    def close(self) -> None:
        self._record("close")


_containers_before: set[str] = set()
_leaked: list[str] = []
_dangling_before: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    if _engine_unavailable() is None:
        import docker

        api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
        _containers_before.update(c["Id"] for c in api.containers(all=True))
        _dangling_before.update(api.images(filters={"dangling": True}, quiet=True))


def _our_projects(session: pytest.Session) -> set[str]:
    """The 8-hex Dockerfile-path digests ending the project names of every Dockerfile this
    run's tests wrote (under pytest's base temp folder): other runs' containers are not ours."""
    import hashlib

    factory = getattr(session.config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else None
    if base is None or not base.exists():
        return set()
    return {hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
            for path in base.rglob("*Dockerfile*") if path.is_file()}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _engine_unavailable() is not None:
        return
    import docker

    api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    ours = _our_projects(session)
    for container in api.containers(all=True, filters={"label": "compimg.project"}):
        project = (container.get("Labels") or {}).get("compimg.project", "")
        if container["Id"] not in _containers_before and project.rsplit("-", 1)[-1] in ours:
            _leaked.append(f"{container['Names'][0]} ({project})")
    # Peer builds (`docker build` of native files) leave untagged stage images, as docker
    # build does; remove the ones this run's builds made (others' runs share the engine).
    from engine_helpers import MADE_BY_DOCKER_BUILD

    for image in api.images(filters={"dangling": True}, quiet=True):
        if image not in _dangling_before and image.removeprefix("sha256:")[:12] in MADE_BY_DOCKER_BUILD:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(image, force=False, noprune=False)
    if _leaked and exitstatus == 0:
        session.exitstatus = 1  # a leak fails the run


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if _engine_unavailable() is None:
        verdict = f"LEAK: {', '.join(_leaked)}" if _leaked else "ok"
        terminalreporter.write_line(f"containers of this run's projects left on the engine: {len(_leaked)} ({verdict})")


def _busy_pool_workers() -> list[tuple[threading.Thread, FrameType]]:
    """Threads of a thread pool (a fake gRPC server's) still running a work item. Python's
    exit joins every pool's threads, daemon or not: one that never ends hangs the run after
    its summary, with nothing printed (a CI timeout)."""
    pool_module = os.path.join("concurrent", "futures", "thread.py")
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == "run" and frame.f_code.co_filename.endswith(pool_module):
                busy.append((thread, frames[thread.ident or 0]))
                break
            frame = frame.f_back
    return busy


def pytest_unconfigure(config: pytest.Config) -> None:
    deadline = time.monotonic() + 15  # a fake stopped last may still be ending its calls
    while (busy := _busy_pool_workers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if busy:
        sys.stdout.flush()
        sys.stderr.write(f"{len(busy)} thread(s) of a test's thread pool still working after the run "
                         "(Python's exit would wait for them for ever):\n")
        for thread, frame in busy:
            sys.stderr.write(f"{thread.name}:\n{''.join(traceback.format_stack(frame))}")
        sys.stderr.flush()
        os._exit(1)


@pytest.fixture
def classic_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of the classic builder's own machinery (one request per stage)."""
    monkeypatch.setenv("INVOKE_COMPIMG_BUILDER", "classic")


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent holding a fresh key (comment compimg-test-key); its socket path."""
    folder = tmp_path / "agent"
    folder.mkdir()
    sock = str(folder / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        key = folder / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "compimg-test-key", "-f", str(key)],
                       check=True)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env={**os.environ, "SSH_AUTH_SOCK": sock},
                       stderr=subprocess.DEVNULL)
        yield sock
    finally:
        agent.terminate()
        agent.wait(10)
