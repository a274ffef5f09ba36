"""A session on the engine's own `POST /session` connection (engine/control/transport
`engine_session`, session `EngineAttached`), without an engine: a fake engine on a unix socket
answers `/version`, switches `/session` to h2c and then calls the session as the daemon does,
as the HTTP/2 client (grpcio's, spliced onto the upgraded connection). The real engine's side
is in tests/test_buildkit.py."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from invoke_compimg.engine.client import Engine
from invoke_compimg.engine.control import transport
from invoke_compimg.engine.control.proto import secrets_pb2
from invoke_compimg.engine.control.providers import Secret
from invoke_compimg.engine.control.session import HEALTH_CHECK, PATHS, EngineAttached, Session

VERSION = {"ApiVersion": "1.41", "Version": "20.10.24", "Os": "linux", "Arch": "amd64"}


def _head(conn: socket.socket) -> tuple[str, list[tuple[str, str]]]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(4096)
        if not more:
            break
        data += more
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return lines[0], [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class FakeEngine:
    """`/version`, then `POST /session` answered 101 (or `session_status`) and spliced onto a
    second socket that `daemon` (a grpcio channel) dials: the daemon's calls reach the session."""

    def __init__(self, folder: Path, session_status: int = 101) -> None:
        self.path = str(folder / "engine.sock")
        self.daemon_path = str(folder / "daemon.sock")
        self.session_status = session_status
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.daemon_listener = socket.socket(socket.AF_UNIX)
        self.daemon_listener.bind(self.daemon_path)
        self.daemon_listener.listen(1)
        self.upgraded: socket.socket | None = None
        threading.Thread(target=self._accept, daemon=True).start()
        self.daemon = grpc.insecure_channel(f"unix:{self.daemon_path}")

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        line, headers = _head(conn)
        self.requests.append((line, headers))
        if line.startswith("GET ") and "/version" in line:
            body = json.dumps(VERSION).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            conn.close()
        elif line.startswith("POST ") and line.split()[1].endswith("/session") and self.session_status == 101:
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            self.upgraded = conn
            daemon, _ = self.daemon_listener.accept()  # grpcio's connection, made on the first call
            threading.Thread(target=_pipe, args=(conn, daemon), daemon=True).start()
            _pipe(daemon, conn)
        else:  # as dockerd answers a path it does not serve
            body = b'{"message":"page not found"}\n'
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            conn.close()

    def call(self, path: str, request: bytes, timeout: float = 10) -> bytes:
        method = self.daemon.unary_unary(path, request_serializer=None, response_deserializer=None)
        return method(request, timeout=timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.daemon.close()
        self.listener.close()
        self.daemon_listener.close()


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[Any]:
    made: list[FakeEngine] = []

    def start(**kwargs: Any) -> FakeEngine:
        made.append(FakeEngine(tmp_path, **kwargs))
        return made[-1]

    yield start
    for fake in made:
        fake.close()


def test_the_session_is_asked_for_with_its_names_as_headers_and_served_on_that_connection(
        fake_engine: Any, tmp_path: Path) -> None:
    fake = fake_engine()
    secret = tmp_path / "token"
    secret.write_text("the value")
    session = Session(shared_key="key-of-the-folder", secrets=[Secret("token", path=str(secret))])
    with Engine({"DOCKER_HOST": f"unix://{fake.path}"}) as engine:
        connection = transport.engine_session(engine, session.metadata())
        assert connection is not None
        with EngineAttached(session, connection):
            assert fake.call(HEALTH_CHECK, b"") == b"\x08\x01"
            answer = fake.call(PATHS["secret"], secrets_pb2.GetSecretRequest(ID="token").SerializeToString())
            assert secrets_pb2.GetSecretResponse.FromString(answer).data == b"the value"
            with pytest.raises(grpc.RpcError) as missing:
                fake.call(PATHS["secret"], secrets_pb2.GetSecretRequest(ID="other").SerializeToString())
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    line, headers = fake.requests[-1]
    assert line.startswith("POST /v1.41/session ")
    named = {k.lower(): v for k, v in headers}
    assert named["upgrade"] == "h2c" and named["connection"].lower() == "upgrade"
    assert named["x-docker-expose-session-uuid"] == session.id
    assert named["x-docker-expose-session-sharedkey"] == "key-of-the-folder"
    methods = [v for k, v in headers if k.lower() == "x-docker-expose-session-grpc-method"]
    assert methods == session.methods() and len(methods) > 1  # one line each, as the engine reads them
    assert session.health_checks == 1


def test_a_refused_export_of_a_name_that_is_not_utf8_is_a_status(fake_engine: Any, tmp_path: Path) -> None:
    """The refusal names the file; its bytes that are not UTF-8 must not stop the status going
    out (the call would hang: the daemon waits for it)."""
    import os

    from invoke_compimg.engine.control import fsutil_wire
    from invoke_compimg.engine.control.fswalk import GO_SYMLINK, Entry
    from invoke_compimg.engine.control.session import LocalExport

    fake = fake_engine()
    session = Session(shared_key="k")
    link = fsutil_wire.stat_packet(Entry(os.fsdecode(b"l\xe9"), GO_SYMLINK | 0o777, linkname="/etc"))
    with Engine({"DOCKER_HOST": f"unix://{fake.path}"}) as engine:
        connection = transport.engine_session(engine, session.metadata())
        assert connection is not None
        with EngineAttached(session, connection), session.exporting(LocalExport(str(tmp_path / "out"))):
            call = fake.daemon.stream_stream(PATHS["filesend"], request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as refused:
                list(call(iter([link, fsutil_wire.END_OF_STATS]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "absolute path '/etc'" in (refused.value.details() or "")


def test_an_engine_that_does_not_switch_is_asked_once_and_gets_control_session(fake_engine: Any) -> None:
    fake = fake_engine(session_status=404)
    session = Session()
    with Engine({"DOCKER_HOST": f"unix://{fake.path}"}) as engine:
        assert transport.engine_session(engine, session.metadata()) is None
        assert transport.engine_session(engine, session.metadata()) is None
    assert [line.split()[1] for line, _ in fake.requests] == ["/version", "/v1.41/session"]


def test_an_engine_not_on_a_unix_socket_gets_control_session() -> None:
    with Engine({"DOCKER_HOST": "tcp://127.0.0.1:9"}) as engine:  # nothing is asked of it
        assert transport.engine_session(engine, Session().metadata()) is None
    with Engine({"DOCKER_HOST": "tcp://127.0.0.1:9"}) as engine, \
            pytest.raises(ValueError, match="header given twice"):
        engine.upgrade("/session", [("X-A", "1"), ("X-A", "2")])


def test_the_engine_going_away_ends_the_session_and_its_threads(fake_engine: Any) -> None:
    fake = fake_engine()
    session = Session()
    with Engine({"DOCKER_HOST": f"unix://{fake.path}"}) as engine:
        connection = transport.engine_session(engine, session.metadata())
        assert connection is not None
        attached = EngineAttached(session, connection)
        assert fake.call(HEALTH_CHECK, b"") == b"\x08\x01"
        assert fake.upgraded is not None
        fake.upgraded.shutdown(socket.SHUT_RDWR)  # the engine's end of the connection
        for thread in attached.threads:
            thread.join(5)
        assert not any(t.is_alive() for t in attached.threads) and attached.server.closed
        attached.close()  # and closing after that is no error
        assert not attached.server.writer.is_alive()


def test_closing_does_not_wait_on_an_engine_that_stopped_reading(tmp_path: Path) -> None:
    """The engine asks for a big file, then reads no more (hung, or gone without closing): the
    session's sending blocks, and `close()` (a solve's end, Ctrl-C) still returns at once, its
    threads ended."""
    import h2.config
    import h2.connection
    import h2.settings

    from invoke_compimg.engine.control.fswalk import Dir
    from invoke_compimg.engine.control.grpc_frames import frame
    from invoke_compimg.engine.control.proto import fsutil_pb2

    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "big.bin").write_bytes(b"\0" * (32 << 20))
    session = Session(dirs=[Dir("context", str(tmp_path / "ctx"))])
    ours, engine = socket.socketpair()

    class Ours:
        def read(self, size: int) -> bytes:
            return ours.recv(size)

        def sendall(self, data: bytes) -> None:
            ours.sendall(data)

        def close(self) -> None:
            with contextlib.suppress(OSError):
                ours.shutdown(socket.SHUT_RDWR)
            ours.close()

    daemon = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    daemon.initiate_connection()
    daemon.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
    daemon.increment_flow_control_window((1 << 31) - 1 - 65535)
    daemon.send_headers(1, [(":method", "POST"), (":path", PATHS["filesync"]), (":scheme", "http"),
                            (":authority", "engine"), ("content-type", "application/grpc"), ("te", "trailers"),
                            ("dir-name", "context")])
    request = fsutil_pb2.Packet(type=fsutil_pb2.Packet.PACKET_REQ, ID=0)  # big.bin, the listing's first
    daemon.send_data(1, frame(request.SerializeToString()))
    engine.sendall(daemon.data_to_send())
    attached = EngineAttached(session, Ours())
    received = b""
    while b"\0" * 4096 not in received:  # the file's bytes have begun to arrive; then nothing is read
        received += engine.recv(1 << 16)
    time.sleep(0.5)  # they fill the socket, and the sending waits on it
    assert all(t.is_alive() for t in attached.threads)
    started = time.monotonic()
    closer = threading.Thread(target=attached.close, daemon=True)
    closer.start()
    closer.join(15)
    assert not closer.is_alive(), "close() waited on the engine"
    assert time.monotonic() - started < 6  # (the server gives a handler up to 5 s to finish)
    assert not any(t.is_alive() for t in attached.threads) and not attached.server.writer.is_alive()
    engine.close()
