"""engine/control/h2_client: our gRPC client, calling grpcio's own server (as it calls the
daemon's Go server) over a unix socket: unary and streaming calls, metadata, statuses, flow
control both ways, cancelling, deadlines, and a connection lost under its calls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from invoke_compimg.engine.control.grpc_frames import CANCELLED, DEADLINE_EXCEEDED, NOT_FOUND, UNAVAILABLE
from invoke_compimg.engine.control.h2_client import Connection, RpcError
from invoke_compimg.engine.control.transport import _SocketStream

MIB = 1 << 20


class Service:
    """grpcio's server on a unix socket, with raw-bytes methods the tests define."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "grpc.sock")
        self.seen_metadata: list[tuple[str, str]] = []
        self.cancelled = threading.Event()
        self.taken = 0  # bytes the streaming method has taken so far
        handlers = {
            "/t.T/Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "/t.T/Count": grpc.unary_stream_rpc_method_handler(self.count),
            "/t.T/Join": grpc.stream_stream_rpc_method_handler(self.join),
            "/t.T/Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "/t.T/Hang": grpc.unary_unary_rpc_method_handler(self.hang),
            "/t.T/Big": grpc.unary_stream_rpc_method_handler(self.big),
        }

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                return handlers.get(details.method)

        self.server = grpc.server(ThreadPoolExecutor(max_workers=8), handlers=[Handler()],
                                  options=[("grpc.max_receive_message_length", 64 << 20),
                                           ("grpc.max_send_message_length", 64 << 20)])
        self.server.add_insecure_port(f"unix:{self.path}")

    def echo(self, request: bytes, context: Any) -> bytes:
        self.seen_metadata.extend(context.invocation_metadata())
        return request[::-1]

    def count(self, request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def join(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for request in requests:
            self.taken += len(request)
            yield b"got " + str(len(request)).encode()

    def fail(self, request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "secret mytoken not found: 100% sure, ünïcode")

    def hang(self, request: bytes, context: Any) -> bytes:
        context.add_callback(self.cancelled.set)
        time.sleep(10)
        return b""

    def big(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(int(request)):
            yield b"x" * (4 * MIB)

    def listen_tls(self, cert: Path, key: Path) -> int:
        """The same methods on 127.0.0.1 with TLS too; the port."""
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        return self.server.add_secure_port("127.0.0.1:0", credentials)

    def connect(self) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        connection = Connection(_SocketStream(sock), name="test-grpc")
        assert connection.ready(5)
        return connection


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    made = Service(tmp_path)
    made.server.start()
    yield made
    made.server.stop(0)


def test_a_unary_call_with_metadata(service: Service) -> None:
    connection = service.connect()
    call = connection.call("/t.T/Echo", metadata=[("X-Docker-Expose-Session-Uuid", "abc")])
    call.send(b"hello", end=True)
    assert call.result(5) == b"olleh"
    assert ("x-docker-expose-session-uuid", "abc") in service.seen_metadata
    assert connection.unary("/t.T/Echo", b"again", timeout=5) == b"niaga"  # the same connection, a new stream
    connection.close()


def test_a_server_stream_of_many_small_messages(service: Service) -> None:
    connection = service.connect()
    call = connection.call("/t.T/Count")
    call.send(b"5000", end=True)
    assert [int(m) for m in call] == list(range(5000))
    connection.close()


def test_both_ways_under_flow_control(service: Service) -> None:
    """24 MiB out in 3 MiB messages and 24 MiB in: more than any window, so both sides wait."""
    connection = service.connect()
    call = connection.call("/t.T/Join")
    sent = threading.Thread(target=lambda: [call.send(b"y" * (3 * MIB)) for _ in range(8)] and call.done_sending())
    sent.start()
    answers = list(call)
    sent.join(10)
    assert answers == [b"got 3145728"] * 8 and service.taken == 24 * MIB
    big = connection.call("/t.T/Big")
    big.send(b"6", end=True)
    assert sum(len(m) for m in big) == 24 * MIB
    connection.close()


def test_a_slow_reader_holds_the_server_back(service: Service) -> None:
    """What is received is given back as it is taken: a reader that takes nothing lets at
    most about a window in."""
    connection = service.connect()
    call = connection.call("/t.T/Big")
    call.send(b"8", end=True)
    time.sleep(1)
    assert call._queued <= 12 * MIB  # the window (8 MiB) and what was in flight, never all 32 MiB
    assert sum(len(m) for m in call) == 32 * MIB
    connection.close()


def test_a_failure_keeps_the_servers_words(service: Service) -> None:
    connection = service.connect()
    with pytest.raises(RpcError) as caught:
        connection.unary("/t.T/Fail", b"", timeout=5)
    assert caught.value.code == NOT_FOUND and caught.value.name == "NOT_FOUND"
    assert caught.value.details == "secret mytoken not found: 100% sure, ünïcode"
    with pytest.raises(RpcError) as unknown:
        connection.unary("/t.T/Nothing", b"", timeout=5)
    assert unknown.value.name == "UNIMPLEMENTED"
    assert connection.unary("/t.T/Echo", b"ok", timeout=5) == b"ko"  # failed calls leave the connection as it was
    connection.close()


def test_cancelling_tells_the_server(service: Service) -> None:
    connection = service.connect()
    call = connection.call("/t.T/Hang")
    call.send(b"", end=True)
    ended: list[int | None] = []
    call.add_done_callback(lambda c: ended.append(c.code))
    time.sleep(0.3)
    call.cancel()
    assert service.cancelled.wait(5)
    assert ended == [CANCELLED]
    with pytest.raises(RpcError):
        call.result(1)
    connection.close()


def test_a_deadline(service: Service) -> None:
    connection = service.connect()
    started = time.monotonic()
    with pytest.raises(RpcError) as caught:
        connection.unary("/t.T/Hang", b"", timeout=0.5)
    assert caught.value.code == DEADLINE_EXCEEDED and time.monotonic() - started < 3
    connection.close()


def test_a_lost_connection_fails_every_call(service: Service) -> None:
    connection = service.connect()
    calls = [connection.call("/t.T/Hang") for _ in range(3)]
    for call in calls:
        call.send(b"", end=True)
    time.sleep(0.2)
    service.server.stop(0)
    for call in calls:
        with pytest.raises(RpcError) as caught:
            call.result(5)
        assert caught.value.code == UNAVAILABLE
    assert not connection.alive
    with pytest.raises(RpcError):
        connection.call("/t.T/Echo")
    connection.close()
    assert not connection.reader.is_alive()


def test_something_that_is_not_http2_is_not_ready(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "mute.sock"))
    listener.listen(1)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(tmp_path / "mute.sock"))
    peer, _ = listener.accept()
    peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    connection = Connection(_SocketStream(sock))
    assert not connection.ready(2)
    connection.close()
    peer.close()
    listener.close()


def test_a_stalled_link_never_holds_up_a_cancel_a_new_call_or_close() -> None:
    """A peer that opens big windows and then stops reading (a link that went away mid-upload):
    the sender blocks in its write, and nothing else waits for it."""
    import h2.config
    import h2.connection
    import h2.settings

    ours, peer = socket.socketpair()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1,
                            h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    server.increment_flow_control_window(2**31 - 1 - 65535)
    peer.sendall(server.data_to_send())

    def serve_a_little() -> None:  # read what came, answer once, then read no more
        server.receive_data(peer.recv(65536))
        peer.sendall(server.data_to_send())

    connection = Connection(_SocketStream(ours))
    serve_a_little()
    assert connection.ready(5)
    call = connection.call("/t.T/Upload")
    serve_a_little()
    failed: list[BaseException] = []

    def upload() -> None:
        try:
            call.send(b"y" * (64 << 20))
        except RpcError as exc:
            failed.append(exc)

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    time.sleep(1)
    assert sender.is_alive()  # stalled in its write
    for action in (call.cancel, lambda: connection.call("/t.T/Other"), connection.close):
        started = time.monotonic()
        done = threading.Thread(target=action, daemon=True)
        done.start()
        done.join(5)
        assert not done.is_alive() and time.monotonic() - started < 2
    sender.join(5)
    assert not sender.is_alive() and not connection.alive
    peer.close()


def test_a_server_going_away_ends_the_calls_in_one_line_and_closes(service: Service) -> None:
    connection = service.connect()
    call = connection.call("/t.T/Hang")
    call.send(b"", end=True)
    time.sleep(0.3)
    service.server.stop(grace=5)  # GOAWAY, then the call may finish: h2 ends it at once
    with pytest.raises(RpcError) as caught:
        call.result(8)
    assert caught.value.code == UNAVAILABLE and "going away" in caught.value.details
    connection.reader.join(5)
    assert not connection.reader.is_alive() and not connection.alive


def test_over_tls_both_ways_at_once(tmp_path: Path) -> None:
    """TLS (ALPN h2) to grpcio's server, reading and writing at the same time: every TLS
    operation runs on the stream's own thread (`transport._TLSStream`)."""
    from test_control import _certificates

    from invoke_compimg.engine.control.transport import TLS, service_connection

    ca, cert, key = _certificates(tmp_path)
    served = Service(tmp_path)
    port = served.listen_tls(cert, key)
    served.server.start()
    try:
        connection = service_connection(f"tcp://127.0.0.1:{port}", TLS(ca=str(ca)), timeout=5)
        call = connection.call("/t.T/Join")
        sent = threading.Thread(target=lambda: [call.send(b"y" * (3 * MIB)) for _ in range(8)] and call.done_sending())
        sent.start()
        big = connection.call("/t.T/Big")
        big.send(b"6", end=True)
        assert sum(len(m) for m in big) == 24 * MIB  # received while the upload goes on
        assert list(call) == [b"got 3145728"] * 8 and served.taken == 24 * MIB
        sent.join(10)
        before = {t.name for t in threading.enumerate()}
        assert "compimg-tls" in before
        connection.close()
        time.sleep(0.2)
        assert "compimg-tls" not in {t.name for t in threading.enumerate()}
    finally:
        served.server.stop(0)
