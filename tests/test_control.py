"""engine/control against the real engine: BuildKit's Control API through `POST /grpc`, with
a session serving the context, secrets, ssh, exports; cancelling; a tcp stand-in for a
buildkitd (tests/control_bridge.py). Every image a test makes is named uniquely and removed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from control_bridge import running

from invoke_compimg.engine.buildkit import StatusResponse
from invoke_compimg.engine.client import Engine
from invoke_compimg.engine.control import client
from invoke_compimg.engine.control.fswalk import Dir, VirtualFile
from invoke_compimg.engine.control.providers import Secret
from invoke_compimg.engine.control.session import Attached, EngineAttached, Session
from invoke_compimg.errors import EngineError

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def control(engine: Any) -> Iterator[client.Control]:
    ctl = client.connect(engine=engine)
    yield ctl
    ctl.close()


def write(folder: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def session_for(context: Path, dockerfile: str, **more: Any) -> Session:
    return Session(shared_key=f"test-{context}", dirs=[
        Dir("context", str(context)),
        Dir("dockerfile", None, files={"Dockerfile": VirtualFile(dockerfile.encode())})], **more)


def build(control: client.Control, context: Path, dockerfile: str, exporter: client.Exporter | None, *,
          session: Session | None = None, attrs: Mapping[str, Any] | None = None, **solve: Any) -> dict[str, str]:
    session = session or session_for(context, dockerfile)
    with control.attach(session):
        return control.solve(session=session, exporter=exporter,
                             frontend_attrs=client.dockerfile_attrs(network="none", **(attrs or {})), **solve)


def test_list_workers_names_the_engine_platform(control: client.Control) -> None:
    workers = control.list_workers()
    assert workers and any(str(p).startswith("linux/") for w in workers for p in w.platforms)


def test_local_export_of_a_file_built_in_a_stage(control: client.Control, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    write(context, {"name.txt": "compimg"})
    dockerfile = ("FROM busybox:latest AS build\nCOPY name.txt /\n"
                  "RUN mkdir -p /out/bin && echo \"built by $(cat /name.txt)\" > /out/bin/app "
                  "&& chmod 4755 /out/bin/app\n"
                  "FROM scratch\nCOPY --from=build /out /\n")
    dest = tmp_path / "dest"
    write(dest, {"bin/mine.txt": "the user's own file"})
    statuses: list[StatusResponse] = []
    build(control, context, dockerfile, client.Exporter.local(str(dest)), on_status=statuses.append)
    assert (dest / "bin" / "app").read_text() == "built by compimg\n"
    assert (dest / "bin" / "app").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert (dest / "bin" / "mine.txt").read_text() == "the user's own file"
    assert sorted(os.listdir(dest)) == ["bin"]
    names = [v.name for s in statuses for v in s.vertexes]
    assert any("RUN mkdir -p /out/bin" in n for n in names) and any("exporting to client" in n for n in names)


def test_tar_export(control: client.Control, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    write(context, {"a.txt": "alpha", "sub/b.txt": "beta"})
    target = tmp_path / "out" / "result.tar"
    build(control, context, "FROM scratch\nCOPY . /files/\n", client.Exporter.tar(str(target)))
    with tarfile.open(target) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert archive.extractfile(members["files/sub/b.txt"]).read() == b"beta"  # type: ignore[union-attr]
    assert os.listdir(target.parent) == ["result.tar"]


def test_image_export_returns_the_image_id(control: client.Control, tmp_path: Path, api: Any, unique: str) -> None:
    context = tmp_path / "ctx"
    write(context, {"a.txt": unique})
    name = f"{unique}:control"
    try:
        answer = build(control, context, "FROM busybox:latest\nCOPY a.txt /\nCMD [\"cat\", \"/a.txt\"]\n",
                       client.Exporter.image([name]))
        image_id = answer["containerimage.digest"]
        found = api.inspect_image(image_id)
        assert found["Id"] == image_id and name in found["RepoTags"]
        assert found["Config"]["Cmd"] == ["cat", "/a.txt"]
    finally:
        with contextlib.suppress(Exception):
            api.remove_image(name, force=True)


SECRET_DOCKERFILE = """FROM busybox:latest AS build
RUN --mount=type=secret,id=token mkdir /out && cp /run/secrets/token /out/seen && echo used > /out/note
FROM scratch
COPY --from=build /out /
"""


def test_a_secret_reaches_the_step_but_not_the_image(control: client.Control, tmp_path: Path, api: Any,
                                                      unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("COMPIMG_TEST_TOKEN", value)
    context = tmp_path / "ctx"
    context.mkdir()
    secrets = [Secret("token", env="COMPIMG_TEST_TOKEN")]
    dest = tmp_path / "dest"
    logs: list[bytes] = []
    session = session_for(context, SECRET_DOCKERFILE, secrets=secrets)
    build(control, context, SECRET_DOCKERFILE, client.Exporter.local(str(dest)), session=session,
          on_status=lambda s: logs.extend(log.msg for log in s.logs), attrs={"no_cache": True})  # secrets are not
    # part of BuildKit's cache key: an earlier run's step would be reused
    assert (dest / "seen").read_text() == value
    name = f"{unique}:secret"
    try:
        answer = build(control, context, SECRET_DOCKERFILE, client.Exporter.image([name]),
                       session=session_for(context, SECRET_DOCKERFILE, secrets=secrets),
                       attrs={"target": "build", "no_cache": True})
        history = api.history(answer["containerimage.digest"])
        assert history and all(value not in (h.get("CreatedBy") or "") for h in history)
        assert value not in str(api.inspect_image(name))
    finally:
        with contextlib.suppress(Exception):
            api.remove_image(name, force=True)
    assert all(value.encode() not in log for log in logs)


def test_a_missing_secret_is_reported(control: client.Control, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    dockerfile = "FROM busybox:latest\nRUN --mount=type=secret,id=absent,required cat /run/secrets/absent\n"
    with pytest.raises(client.SolveFailed, match="secret absent"):
        build(control, context, dockerfile, None, session=session_for(context, dockerfile, secrets=[
            Secret("other", path=str(tmp_path / "nothing"))]))


AGENT_PROBE = r"""package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
)

func ask(c net.Conn, request []byte) []byte {
	c.Write(request)
	var h [4]byte
	io.ReadFull(c, h[:])
	b := make([]byte, binary.BigEndian.Uint32(h[:]))
	io.ReadFull(c, b)
	return b
}

func main() {
	c, err := net.Dial("unix", os.Getenv("SSH_AUTH_SOCK"))
	if err != nil {
		fmt.Println("no agent:", err)
		return
	}
	b := ask(c, []byte{0, 0, 0, 1, 11}) // REQUEST_IDENTITIES
	n := binary.BigEndian.Uint32(b[1:5])
	off := 5
	for i := 0; i < int(n); i++ {
		l := int(binary.BigEndian.Uint32(b[off:]))
		off += 4 + l
		l = int(binary.BigEndian.Uint32(b[off:]))
		fmt.Printf("key %s\n", b[off+4:off+4+l])
		off += 4 + l
	}
	fmt.Printf("remove-all answer %d\n", ask(c, []byte{0, 0, 0, 1, 19})[0]) // REMOVE_ALL_IDENTITIES
}
"""


def test_ssh_forwarding_reaches_the_agent_read_only(control: client.Control, tmp_path: Path, ssh_agent: str) -> None:
    context = tmp_path / "ctx"
    write(context, {"probe.go": AGENT_PROBE})
    dockerfile = ("FROM golang:1.19 AS build\nCOPY probe.go /src/\n"
                  "RUN --mount=type=ssh cd /src && GOFLAGS=-mod=mod CGO_ENABLED=0 go run probe.go > /report\n"
                  "FROM scratch\nCOPY --from=build /report /\n")
    dest = tmp_path / "dest"
    build(control, context, dockerfile, client.Exporter.local(str(dest)),
          session=session_for(context, dockerfile, ssh={"default": ssh_agent}))
    report = (dest / "report").read_text()
    assert "key compimg-test-key" in report
    assert "remove-all answer 5" in report  # SSH_AGENT_FAILURE: the agent's keys are not the build's to change
    listed = subprocess.run(["ssh-add", "-l"], env={**os.environ, "SSH_AUTH_SOCK": ssh_agent}, text=True,
                            capture_output=True)
    assert "compimg-test-key" in listed.stdout
    unknown = dockerfile.replace("type=ssh", "type=ssh,id=elsewhere,required")
    with pytest.raises(client.SolveFailed, match="elsewhere"):
        build(control, context, unknown, None, session=session_for(context, unknown, ssh={"default": ssh_agent}),
              attrs={"no_cache": True})  # the agent is not part of BuildKit's cache key


def test_nothing_outside_the_context_is_sent(control: client.Control, tmp_path: Path) -> None:
    marker = f"OUTSIDE-{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    write(outside, {"secret.txt": marker})
    context = tmp_path / "ctx"
    write(context, {"app.txt": "inside"})
    (context / "passwd").symlink_to("/etc/passwd")
    (context / "up").symlink_to("../outside/secret.txt")
    (context / "abs").symlink_to(outside / "secret.txt")
    dockerfile = ("FROM busybox:latest AS look\nCOPY . /ctx/\n"
                  "RUN (ls -la /ctx; cat /ctx/up /ctx/abs; head -1 /ctx/passwd) > /report 2>&1; true\n"
                  "FROM scratch\nCOPY --from=look /report /\n")
    session = session_for(context, dockerfile)
    dest = tmp_path / "dest"
    build(control, context, dockerfile, client.Exporter.local(str(dest)), session=session)
    report = (dest / "report").read_text()
    assert "passwd -> /etc/passwd" in report and marker not in report
    host_root_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert host_root_line not in report.splitlines()[-2:]  # the last lines are `head -1 /ctx/passwd`
    # the frontend asks for the paths COPY names: links and `..` stay inside the folder
    for source in ("up", "abs", "../outside/secret.txt"):
        copy = f"FROM scratch\nCOPY {source} /got\n"
        with contextlib.suppress(client.SolveFailed):
            build(control, context, copy, client.Exporter.local(str(tmp_path / "copied")),
                  session=session_for(context, copy))
        for path in (tmp_path / "copied").rglob("*") if (tmp_path / "copied").exists() else ():
            assert path.is_symlink() or marker not in path.read_text()
    sent = sum(t.bytes for t in session.transfers)
    assert sent < 10_000  # the small files of the context, nothing of /etc or the outside folder


def _running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if marker.encode() in file.read():
                        return True
            except OSError:
                continue
    return False


def test_cancelling_stops_the_step_at_once(control: client.Control, tmp_path: Path) -> None:
    marker = f"compimg-cancel-{uuid.uuid4().hex[:8]}"
    context = tmp_path / "ctx"
    context.mkdir()
    dockerfile = f"FROM busybox:latest\nRUN sleep 60 && echo {marker}\n"
    cancel = threading.Event()
    started = threading.Event()

    def watch(status: StatusResponse) -> None:
        if any(marker in v.name and v.started for v in status.vertexes):
            started.set()

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            build(control, context, dockerfile, None, on_status=watch, cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    deadline = time.monotonic() + 20
    while not _running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(marker), "the step's process should be running"
    cancel.set()
    cancelled_at = time.monotonic()
    thread.join(10)
    returned = time.monotonic() - cancelled_at
    while _running(marker) and time.monotonic() - cancelled_at < 5:
        time.sleep(0.02)
    gone = time.monotonic() - cancelled_at
    print(f"\ncancel: solve returned after {returned:.2f} s, the step's process was gone after {gone:.2f} s")
    assert outcome and isinstance(outcome[0], client.Cancelled)
    assert returned < 1.0 and gone < 1.0


def test_the_session_answers_health_checks_during_a_long_build(control: client.Control, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    write(context, {"late.txt": "still here"})
    dockerfile = ("FROM busybox:latest AS build\nRUN sleep 6\nCOPY late.txt /\nFROM scratch\n"
                  "COPY --from=build /late.txt /\n")
    session = session_for(context, dockerfile)
    dest = tmp_path / "dest"
    started = time.monotonic()
    build(control, context, dockerfile, client.Exporter.local(str(dest)), session=session,
          attrs={"no_cache": True})
    assert time.monotonic() - started > 5
    assert session.health_checks >= 4
    assert (dest / "late.txt").read_text() == "still here"


def test_a_big_context_sends_only_the_file_copied(control: client.Control, tmp_path: Path) -> None:
    """200 MB in 2,000 files; the Dockerfile copies one: only that file travels (the frontend
    sends COPY sources as followpaths). Timed against `docker build` of the same folder."""
    context = tmp_path / "ctx"
    block = os.urandom(100_000)
    for i in range(2000):
        path = context / f"d{i % 20:02d}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(4, "big") + block)
    dockerfile = "FROM scratch\nCOPY d07/f1007.bin /picked.bin\n"
    session = session_for(context, dockerfile)
    dest = tmp_path / "ours"
    started = time.perf_counter()
    build(control, context, dockerfile, client.Exporter.local(str(dest)), session=session)
    ours = time.perf_counter() - started
    assert (dest / "picked.bin").read_bytes() == (context / "d07" / "f1007.bin").read_bytes()
    context_transfers = [t for t in session.transfers if t.dir == "context"]
    assert sum(t.files for t in context_transfers) == 1
    assert sum(t.bytes for t in context_transfers) == 100_004
    (context / "Dockerfile").write_text(dockerfile)
    started = time.perf_counter()
    subprocess.run(["/usr/bin/docker", "build", "-q", "--network", "none",
                    "-o", f"type=local,dest={tmp_path / 'theirs'}", str(context)],
                   check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True)
    theirs = time.perf_counter() - started
    print(f"\n200 MB / 2,000-file context, one file copied, cold: control {ours:.2f} s, "
          f"DOCKER_BUILDKIT=1 docker build {theirs:.2f} s")
    assert (tmp_path / "theirs" / "picked.bin").read_bytes() == (dest / "picked.bin").read_bytes()


# --- a buildkitd address (a tcp stand-in: the engine's Control through a bridge process) ----


def test_a_tcp_buildkitd_address(tmp_path: Path) -> None:
    with running() as address:
        ctl = client.connect(address)
        try:
            assert ctl.list_workers()
            context = tmp_path / "ctx"
            write(context, {"a.txt": "over tcp"})
            dest = tmp_path / "dest"
            build(ctl, context, "FROM scratch\nCOPY a.txt /\n", client.Exporter.local(str(dest)))
            assert (dest / "a.txt").read_text() == "over tcp"
        finally:
            ctl.close()


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=compimg test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_tls_to_a_buildkitd_and_its_mismatches(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    with running("--cert", str(cert), "--key", str(key)) as address:
        port = address.rsplit(":", 1)[1]
        ctl = client.connect(address, tls=client.TLS(ca=str(ca)))
        try:
            assert ctl.list_workers()
        finally:
            ctl.close()
        with pytest.raises(EngineError, match=rf"127\.0\.0\.1:{port}.*(TLS|gRPC)"):
            client.connect(f"tcp://127.0.0.1:{port}", timeout=3)  # plain gRPC to a TLS server
        (tmp_path / "other").mkdir()
        other, _, _ = _certificates(tmp_path / "other")
        with pytest.raises(EngineError, match="CA, certificate and key"):
            client.connect(f"tcp://127.0.0.1:{port}", tls=client.TLS(ca=str(other)), timeout=3)
    with running() as address, pytest.raises(EngineError, match="TLS"):
        client.connect(address, tls=client.TLS(ca=str(ca)), timeout=3)


def test_an_unreachable_address_is_one_line() -> None:
    with socket_port() as port:
        pass  # closed again: nothing listens there
    with pytest.raises(EngineError, match=rf"cannot reach BuildKit at tcp://127\.0\.0\.1:{port} \(.*refused"):
        client.connect(f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(EngineError, match=r"unix:///nonexistent/buildkitd\.sock"):
        client.connect("unix:///nonexistent/buildkitd.sock", timeout=2)


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_nothing_is_left_running(api: Any, tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    ctl = client.connect(engine=Engine())
    context = tmp_path / "ctx"
    write(context, {"a.txt": "x"})
    dockerfile = "FROM scratch\nCOPY a.txt /\n"
    session = session_for(context, dockerfile)
    with ctl.attach(session) as attached:
        ctl.solve(session=session, frontend_attrs=client.dockerfile_attrs(network="none"),
                  exporter=client.Exporter.local(str(tmp_path / "dest")))
        # on the engine's own /session connection where it is on its unix socket: nothing of ours listens
        assert isinstance(attached, EngineAttached if ctl._session_dial and Engine().over_unix_socket else Attached)
        connection = ctl.connection()  # the upgraded /grpc connection itself: no socket of ours either
        assert connection.alive
    ctl.close()
    time.sleep(0.2)
    left = {t.name for t in threading.enumerate()} - before
    assert not [n for n in left if n.startswith("compimg")], left
    assert not connection.alive and connection.reader is not None and not connection.reader.is_alive()
    assert os.listdir(tmp_path / "dest") == ["a.txt"]


def test_ctrl_c_in_the_caller_cancels_the_solve(control: client.Control, tmp_path: Path) -> None:
    import signal

    marker = f"compimg-ctrlc-{uuid.uuid4().hex[:8]}"
    context = tmp_path / "ctx"
    context.mkdir()
    dockerfile = f"FROM busybox:latest\nRUN sleep 60 && echo {marker}\n"
    interrupted_at: list[float] = []

    def interrupt_once_running() -> None:
        deadline = time.monotonic() + 60
        while not _running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the thread that called solve

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        build(control, context, dockerfile, None)
    while _running(marker) and time.monotonic() - interrupted_at[0] < 5:
        time.sleep(0.02)
    assert time.monotonic() - interrupted_at[0] < 1.0


def test_several_solves_share_one_session(control: client.Control, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    write(context, {"a.txt": "alpha", "b.txt": "beta"})
    first = "FROM busybox:latest\nCOPY a.txt /\nRUN sleep 1 && cat /a.txt\n"
    second = "FROM busybox:latest\nCOPY b.txt /\nRUN sleep 1 && cat /b.txt\n"
    session = Session(shared_key=f"test-{context}", dirs=[
        Dir("context", str(context)),
        Dir("one", None, files={"Dockerfile": VirtualFile(first.encode())}),
        Dir("two", None, files={"Dockerfile": VirtualFile(second.encode())})])
    logs: dict[str, list[bytes]] = {"one": [], "two": []}
    failures: list[BaseException] = []

    def solve(dockerfile_dir: str) -> None:
        try:
            control.solve(session=session, frontend_attrs=client.dockerfile_attrs(
                network="none", no_cache=True, dockerfile=dockerfile_dir),
                on_status=lambda s: logs[dockerfile_dir].extend(log.msg for log in s.logs))
        except BaseException as exc:
            failures.append(exc)

    with control.attach(session):
        threads = [threading.Thread(target=solve, args=(name,)) for name in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert failures == []
    assert b"alpha" in b"".join(logs["one"]) and b"beta" in b"".join(logs["two"])
