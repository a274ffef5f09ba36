"""The engine layer and what uses it on the host, without an engine: engine/images.py,
engine/containers.py, the `Engine`'s error seam, host/artifacts.py (copy_out, clean),
host/terminal.py (the shell) and building/push.py, replayed from what the real engine
answered (engine_scenarios: engine_calls, artifacts, shell, registry)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from engine_scenarios import replayed
from fake_engine import FakeEngine

from invoke_compimg.building import push
from invoke_compimg.engine import containers, images
from invoke_compimg.engine.client import Engine, _ssh_failure, _ssh_target, reason
from invoke_compimg.engine.unix_http import UnixJSON
from invoke_compimg.errors import EngineError, UserError
from invoke_compimg.procs import owner
from invoke_compimg.progress import PlainReporter


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with replayed("engine_calls", tmp_path_factory.mktemp("calls")) as (seen, fake):
        yield seen, fake


def body_of(fake: FakeEngine, method: str, path: str, *, failed: bool = False) -> Any:
    found = next(e for e in fake.exchanges if e.method == method and e.path.endswith(path)
                 and (e.status >= 400) == failed)
    return json.loads(found.body or "null")


# --- engine/images.py ----------------------------------------------------------------------

def test_inspecting_images(calls: Any) -> None:
    seen, fake = calls
    assert seen.kind.name.startswith("Docker ") and seen.kind.buildkit and seen.kind.api_version == "1.41"
    assert seen.missing is None  # a 404 is an answer, not an error
    assert seen.busybox.startswith("sha256:") and seen.size == body_of(fake, "GET", "/images/busybox/json")["Size"]
    assert seen.history == ()  # no ONBUILD in its history
    # Every call after the first uses the engine's own API version.
    assert all(r.path.startswith("/v1.41/") for r in fake.log[1:])


def test_naming_and_removing(calls: Any) -> None:
    seen, fake = calls
    [(image, ref)] = seen.listed
    assert image == seen.busybox and ref.endswith(":one")
    tagged = fake.requests("POST", "/tag$")[0]
    assert tagged.param("repo") == ref.split(":")[0] and tagged.param("tag") == "one" and tagged.param("force") == "1"
    assert seen.in_use is False  # 409: still used, left as it is
    assert len(fake.requests("DELETE", "/images/")) == 3  # the 409, the untag, the untag of a name already gone


def test_api_errors_keep_the_engines_words(calls: Any) -> None:
    seen, fake = calls
    said = body_of(fake, "POST", "/tag", failed=True)["message"]
    assert str(seen.tag_missing) == f"tagging {seen.listed[0][1].split(':')[0]}:two: no such image ({said})"
    said = body_of(fake, "POST", "/images/create", failed=True)["message"]
    assert str(seen.pull_missing) == f"pulling compimg-no-such-image:1: {said}"


def test_cache_sources_the_engine_cannot_pull_are_left_out_once(calls: Any) -> None:
    seen, fake = calls
    assert seen.cache == ("busybox",) and seen.cache_again == ()
    assert seen.lines[0] == "pulling cache source compimg-no-such-cache:1"
    assert seen.lines[1].startswith("cache source compimg-no-such-cache:1 not used: pulling compimg-no-such-cache:1: ")
    assert len(seen.lines) == 2  # asked once per Engine
    assert len(fake.requests("POST", "/images/create")) == 2  # the failed pull above, and this one


def test_buildkit_network_asked_once(calls: Any) -> None:
    seen, fake = calls
    assert seen.network == seen.network_again == "none"  # this engine has no bridge network
    assert len(fake.requests("GET", "/networks$")) == 1


# --- engine/containers.py --------------------------------------------------------------------

def test_a_container_to_copy_from_is_never_started_and_always_removed(calls: Any) -> None:
    seen, fake = calls
    [created] = fake.requests("POST", "/containers/create$")
    body = created.sent["json"]
    assert body["Cmd"] == containers.NEVER_RUN and body["Entrypoint"] == [] and body["NetworkDisabled"] is True
    assert body["Labels"] == {containers.LABEL_TEMPORARY: owner(), containers.LABEL_PROJECT: body["Labels"][
        containers.LABEL_PROJECT]}
    assert created.param("name").startswith("compimg-tmp-")
    assert not fake.requests("POST", "/start$")
    removed = [r.path for r in fake.requests("DELETE", "/containers/")]
    assert removed[-1].endswith(seen.container)  # after the archives, even the one that failed
    assert str(seen.no_path) == "no /no/such/path" and seen.etc == ["hostname"]


# --- the Engine's error seam --------------------------------------------------------------------

def test_a_connection_lost_mid_request_is_one_line(tmp_path: Path) -> None:
    with FakeEngine("engine_calls") as fake, fake.engine() as engine:
        fake.cut("GET", "/images/busybox/json$", after=0)
        with pytest.raises(EngineError) as caught:
            images.inspect(engine, "busybox")
        fake.verify(all_used=False)
    assert str(caught.value) == (f"inspecting busybox: lost the Docker engine at {fake.address} "
                                 "(connection aborted); check that it is running, then retry")


def test_an_engine_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(EngineError) as caught:
        Engine({"DOCKER_HOST": address}).api  # noqa: B018
    assert str(caught.value) == (f"cannot reach the Docker engine at {address} (no such file or directory); "
                                 "start Docker, or set DOCKER_HOST to the engine to use")


def test_a_request_the_recording_lacks_fails_loudly() -> None:
    with FakeEngine("engine_calls") as fake, fake.engine() as engine:
        with pytest.raises(EngineError) as caught:
            images.inspect(engine, "not-in-the-recording:1")
        assert "fake engine: the recording engine_calls has no GET /v1.41/images/not-in-the-recording:1/json" \
            in str(caught.value)
        with pytest.raises(AssertionError, match=r"unexpected request GET /v1\.41/images/not-in-the-recording"):
            fake.verify(all_used=False)


def test_ssh_words() -> None:
    assert _ssh_target("ssh://me@host:2222") == "-p 2222 me@host" and _ssh_target("ssh://host") == "host"
    assert reason(OSError("[Errno 111] Connection refused")) == "connection refused"
    said = _ssh_failure("ssh://me@host", "ssh://me@host", ConnectionRefusedError("refused"))
    assert said.startswith("cannot reach the Docker engine at ssh://me@host through ssh (nothing answers ssh there")


# --- host/artifacts.py --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with replayed("artifacts", tmp_path_factory.mktemp("artifacts")) as (seen, fake):
        yield seen, fake


def test_copy_out_writes_the_files_of_the_image(copied: Any) -> None:
    seen, _ = copied
    tree = seen.destination / "tree" / "out"
    assert (tree / "a.txt").read_text() == "alpha\n" and (tree / "sub" / "b.txt").read_text() == "beta\n"
    assert os.readlink(tree / "link") == "a.txt"
    assert seen.tree.names == ["out"] and seen.tree.files == 5
    assert (seen.destination / "file" / "a.txt").read_text() == "alpha\n" and seen.file.names == ["a.txt"]
    assert seen.out.splitlines() == [f"copying build:/out into {seen.destination / 'tree'}",
                                     f"copying build:/out/a.txt into {seen.destination / 'file'}"]


def test_copy_out_of_a_missing_path_says_how_to_look(copied: Any) -> None:
    seen, _ = copied
    error = seen.missing[1]
    assert isinstance(error, UserError)
    dockerfile = seen.destination.parent / "app" / "Dockerfile"
    assert str(error) == f"{dockerfile}:1: '/nope' does not exist in stage 'build'; check the path with `shell build`"
    assert not (seen.destination / "none").exists()


def test_copy_out_reaps_a_killed_runs_leftover_and_removes_its_own(copied: Any) -> None:
    seen, fake = copied
    removed = [r.path.rsplit("/", 1)[1] for r in fake.requests("DELETE", "/containers/")]
    created = [r for r in fake.requests("POST", "/containers/create$") if r.param("name")]
    assert removed[0] == seen.leftover  # its owner is gone
    assert len(created) == 3 and len(removed) == 4 and not fake.requests("POST", "/start$")


def test_clean_removes_the_projects_names_only(copied: Any) -> None:
    seen, fake = copied
    untagged = [r.path.split("/images/", 1)[1] for r in fake.requests("DELETE", "/images/")]
    # Its two names (the stage's and the inputs record), both in the project's repository.
    assert len(untagged) == 2 and all(t.startswith(seen.repository + ":build") for t in untagged)
    assert seen.cleaned == (0, 1)
    assert seen.clean_out == f"removed 0 container(s) and 1 image(s) of {seen.repository}\n"


# --- host/terminal.py ---------------------------------------------------------------------------

def test_the_shell_passes_both_streams_and_the_exit_status(tmp_path: Path) -> None:
    with replayed("shell", tmp_path) as (seen, fake):
        pass
    assert seen.status == 3 and seen.stdout == b"to-out\n" and seen.stderr == b"to-err\n"
    [created] = fake.requests("POST", "/containers/create$")
    body = created.sent["json"]
    assert body["Cmd"] == ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]
    assert body["OpenStdin"] is True and body["Tty"] is False  # not a terminal: streams kept apart
    order = [r.path.rsplit("/", 1)[-1] for r in fake.log[2:]]
    assert order[1:] == ["attach", "start", "wait", order[-1]] and fake.log[-1].method == "DELETE"


# --- building/push.py ----------------------------------------------------------------------------

def test_push_publishes_the_built_image_with_its_digest(tmp_path: Path) -> None:
    with replayed("registry", tmp_path) as (seen, fake):
        pass
    [(ref, digest)] = seen.pushed
    assert ref.endswith("/app:1") and digest.startswith("sha256:")
    lines = seen.push_out.splitlines()
    assert lines[0] == f"[build] pushing {ref}" and lines[-1] == f"[build] pushed {ref}@{digest}"
    assert len(lines) > 2  # layers=True: the registry's progress lines too
    pushes = fake.requests("POST", "/push$")  # the scenario's base image, then the build's tag
    assert [(r.path, r.param("tag")) for r in pushes] == [(f"/v1.41/images/{ref.rsplit('/', 1)[0]}/base/push", "1"),
                                                          (f"/v1.41/images/{ref[:-2]}/push", "1")]


def test_push_refuses_a_tag_another_build_moved(tmp_path: Path) -> None:
    out = []
    with FakeEngine("registry") as fake, fake.engine() as engine:
        # Named in the recorded answer; no request of this test names them.
        fake.bound.update({"project": "app-00000000", "inputs:1": "b" + "0" * 39})
        ref = fake_registry_ref(fake)
        with pytest.raises(UserError) as caught:
            push.push(engine, [("build", ref, "sha256:" + "1" * 64)], PlainReporter(_Lines(out), _Lines(out)),
                      layers=False)
        fake.verify(all_used=False)
    assert str(caught.value) == (f"--push: {ref} no longer names the image this run built for stage 'build' "
                                 "(another build moved it); run the build again")
    assert not fake.requests("POST", "/push$") and out == []


def fake_registry_ref(fake: FakeEngine) -> str:
    """The pushed ref of the recording, spelt with a registry and a name of this test."""
    template = next(e.path for e in fake.exchanges if e.method == "GET" and e.path.endswith("/app:1/json"))
    return template.split("/images/", 1)[1][: -len("/json")].replace("{{registry}}", "127.0.0.1:5999").replace(
        "{{unique}}", "compimg-fake-test")


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


def test_push_plan_pushes_only_what_this_run_built() -> None:
    tags = {"run": ("app:1",), "build": ("app-build:1",), "other": ("other:1",)}
    skipped: list[str] = []
    chosen = push.plan(tags, {"run": "sha256:r", "build": "sha256:b"}, "run", False, skipped.append)
    assert chosen == [("run", "app:1", "sha256:r")]
    assert any("not pushing other:1: stage 'other' is not part of this build" in s for s in skipped)
    assert any("not pushing app-build:1 (stage 'build'): only the target's tags" in s for s in skipped)
    everything = push.plan(tags, {"run": "sha256:r", "build": "sha256:b"}, "run", True, skipped.append)
    assert ("build", "app-build:1", "sha256:b") in everything
    with pytest.raises(UserError, match="is not part of this build of 'run', so the tag may name an old image"):
        push.plan(tags, {"run": "sha256:r"}, "run", False)


def test_a_connection_made_while_the_engine_closes_is_closed_not_kept() -> None:
    """BuildKit's connection is made early on a thread of its own (builders/buildkit.prepare);
    a build that ends first closes the Engine meanwhile: that connection must not outlive it."""
    import threading

    class Connection:
        closed = False

        def close(self) -> None:
            self.closed = True

    engine = Engine({"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    computing, closed = threading.Event(), threading.Event()
    made: list[Connection] = []

    def connect() -> Connection:
        computing.set()
        closed.wait(5)
        made.append(Connection())
        return made[-1]

    worker = threading.Thread(target=engine.remember, args=("control", connect))
    worker.start()
    computing.wait(5)
    engine.close()
    closed.set()
    worker.join(5)
    assert made and made[0].closed and "control" not in engine.notes
    assert engine.remember("control", Connection) is engine.remember("control", Connection)  # kept once open again


def test_an_error_page_in_html_is_the_engines_line(tmp_path: Path) -> None:
    """A proxy in front of the engine (a socket proxy with an access list) answers 403 in HTML."""
    import http.server
    import socketserver
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            version = self.path.endswith("/version")
            body = b'{"Version":"24.0","ApiVersion":"1.43","Os":"linux"}' if version else b"<html>403 Forbidden</html>"
            self.send_response(200 if version else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> Any:
            request, _ = super().get_request()
            return request, ("local", 0)

    path = str(tmp_path / "proxy.sock")
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Engine({"DOCKER_HOST": f"unix://{path}"}) as engine, pytest.raises(EngineError, match="403 Forbidden"):
            images.inspect(engine, "alpine:3")
    finally:
        server.shutdown()
        server.server_close()


class _VersionServer:
    """A unix socket that answers `GET /version` (after `delay` seconds), counting the asks."""

    def __init__(self, path: Path, delay: float = 0.0) -> None:
        import socketserver
        import threading
        import time
        from http.server import BaseHTTPRequestHandler

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # (http.server's name)
                server.asked.append(self.path)
                time.sleep(delay)
                body = json.dumps({"Version": "20.10.24", "ApiVersion": "1.41", "Os": "linux", "Arch": "arm64"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.asked: list[str] = []
        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_engines_version_asked_early_is_the_one_its_engine_uses(tmp_path: Path) -> None:
    """`ask_early` asks while the task reads its flags; the Engine then asks no more. Not for
    other addresses, nor once stale; a failed early ask is asked again, saying why then."""
    import time

    from invoke_compimg.engine import client

    server = _VersionServer(tmp_path / "engine.sock", delay=1.0)
    env = {"DOCKER_HOST": f"unix://{tmp_path / 'engine.sock'}"}
    try:
        started = time.monotonic()
        client.ask_early(env)
        client.ask_early(env)  # once per address
        assert time.monotonic() - started < 0.8  # it does not wait for the answer
        client._early_versions[str(tmp_path / "engine.sock")]._asked.result()  # (waits for the answer)
        with Engine(env) as engine:
            assert engine.kind.platform == "linux/arm64" and engine.kind.api_version == "1.41"
        assert server.asked == ["/version"]
        with Engine(env) as engine:  # taken once: the next Engine asks itself
            assert engine.kind.arch == "arm64"
        assert server.asked == ["/version"] * 2

        client.ask_early({"DOCKER_HOST": "tcp://127.0.0.1:1"})  # not a unix socket: nothing to ask early
        assert not client._early_versions
        client.ask_early(env)
        client._early_versions[env["DOCKER_HOST"][7:]].started -= client._EarlyVersion.FRESH_SECONDS + 1
        with Engine(env) as engine:
            assert engine.kind.arch == "arm64"
        assert server.asked == ["/version"] * 4  # the stale answer was not used
    finally:
        server.close()
    client.ask_early(env)  # nobody answers now: what asking raised is the Engine's one line
    with Engine(env) as engine, pytest.raises(EngineError, match="cannot reach the Docker engine"):
        engine.kind  # noqa: B018


# --- engine/unix_http.py -------------------------------------------------------------------

def test_an_engine_slow_to_accept_delays_a_request_and_does_not_fail_it() -> None:
    """With its socket's queue of connections full (requests at the same time, an engine busy),
    a unix connect with a timeout set fails at once (EAGAIN) instead of waiting: the request
    waits until the engine accepts it."""
    path = os.path.join(tempfile.mkdtemp(prefix="compimg-queue-"), "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    while True:  # fill the queue
        waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiting.settimeout(1)
        try:
            waiting.connect(path)
        except BlockingIOError:
            waiting.close()
            break
        queued.append(waiting)
    assert queued

    def engine() -> None:
        time.sleep(0.3)
        for waiting in queued:
            waiting.close()
        while True:
            conn, _ = listener.accept()
            with conn:
                if conn.recv(65536).startswith(b"GET /v1.41/_ping"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                                 b'{"ok":true}')
                    return

    server = threading.Thread(target=engine, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        assert UnixJSON(path, timeout=5).get("/v1.41/_ping") == {"ok": True}
        assert time.monotonic() - started >= 0.25  # it did wait for the engine
    finally:
        server.join(5)
        listener.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


# --- building/reuse.py: the records listing ---------------------------------------------------

class _ListingEngine:
    """Answers `GET /images/json` (what `tags_in_repository` asks), once `release` is set;
    notes when it was asked."""

    def __init__(self, tags: list[str], fail: bool = False) -> None:
        self.tags, self.fail = tags, fail
        self.asked = threading.Event()
        self.release = threading.Event()

    def get_json(self, path: str, *args: Any, params: Any = None) -> Any:
        assert path == "/images/json"
        self.asked.set()
        self.release.wait(5)
        if self.fail:
            raise EngineError("listing images: the engine went away")
        return [{"Id": "sha256:old", "RepoTags": self.tags}]

    def errors(self, what: str) -> Any:
        import contextlib
        return contextlib.nullcontext()


def test_the_records_are_listed_while_the_build_runs_only_when_the_other_builder_held_the_name(
        tmp_path: Path) -> None:
    from invoke_compimg.building import reuse
    from invoke_compimg.building.project import Project

    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    project = Project(tmp_path / "Dockerfile", tmp_path)
    ours = project.inputs_ref("stage-0", "b1234")  # BuildKit's record ("b"); classic's start with "c"
    engine = _ListingEngine([ours, project.local_ref("stage-0")])
    name = project.local_ref("stage-0")
    held_by_classic = {"Id": "sha256:c", "RepoTags": [name, project.inputs_ref("stage-0", "c9")]}
    held_by_buildkit = {"Id": "sha256:b", "RepoTags": [project.local_ref("stage-0"), ours]}
    assert reuse.records_listing(engine, project, "stage-0", None, "buildkit") is None  # type: ignore[arg-type]
    assert reuse.records_listing(engine, project, "stage-0", held_by_buildkit, "buildkit") is None  # type: ignore[arg-type]
    assert not engine.asked.is_set()
    listed = reuse.records_listing(engine, project, "stage-0", held_by_classic, "buildkit")  # type: ignore[arg-type]
    assert listed is not None and engine.asked.wait(5)  # asked at once, not when the build is over
    engine.release.set()
    assert listed.result() == [("sha256:old", ours), ("sha256:old", project.local_ref("stage-0"))]

    failing = _ListingEngine([], fail=True)
    failing.release.set()
    listed = reuse.records_listing(failing, project, "stage-0", held_by_classic, "buildkit")  # type: ignore[arg-type]
    assert listed is not None
    with pytest.raises(EngineError, match="went away"):
        listed.result()  # said by the build's own thread, when retiring asks
