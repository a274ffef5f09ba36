"""engine/control/h2_server: our gRPC server on HTTP/2 bytes, called by grpcio's own client
(as the daemon's Go client would call it), over a unix socket that a test pump feeds in."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from invoke_compimg.engine.control import h2_server
from invoke_compimg.engine.control.h2_server import Call, Method, Server


class Served:
    """`methods` served on one connection a grpcio channel makes to a unix socket."""

    def __init__(self, folder: Path, methods: dict[str, Method]) -> None:
        self.methods = methods
        self.writes: list[int] = []  # the size of every write the server handed on
        self.path = str(folder / "h2.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.server: Server | None = None
        self.peer: socket.socket | None = None
        threading.Thread(target=self._accept, daemon=True).start()
        self.channel = grpc.insecure_channel(f"unix:{self.path}")

    def _accept(self) -> None:
        peer, _ = self.listener.accept()

        self.peer = peer

        def send(data: bytes) -> None:
            self.writes.append(len(data))
            with contextlib.suppress(OSError):  # the test's client went first
                peer.sendall(data)

        self.server = Server(self.methods.get, send, name="test-h2")
        with contextlib.suppress(OSError):
            while data := peer.recv(1 << 16):
                self.server.receive(data)
        self.server.close()

    def close(self) -> None:
        self.channel.close()
        self.listener.close()
        if self.server is not None:
            self.server.close()
        if self.peer is not None:
            self.peer.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    made: list[Served] = []

    def start(methods: dict[str, Method]) -> Served:
        made.append(Served(tmp_path, methods))
        return made[-1]

    yield start
    for served in made:
        served.close()


def test_a_unary_call_sees_its_metadata(serve: Any) -> None:
    seen: list[tuple[str, str]] = []

    def echo(request: bytes, call: Call) -> bytes:
        seen.extend(call.invocation_metadata())
        return request[::-1]

    served = serve({"/t.T/Echo": Method(echo, streaming=False)})
    answer = served.channel.unary_unary("/t.T/Echo")(b"abc", metadata=[("dir-name", "context"), ("x-a", "1")],
                                                       timeout=10)
    assert answer == b"cba"
    assert ("dir-name", "context") in seen and ("x-a", "1") in seen


def test_thousands_of_small_messages_leave_in_few_writes(serve: Any) -> None:
    count = 5000

    def listing(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        for i in range(count):
            yield f"entry {i}".encode()

    served = serve({"/t.T/List": Method(listing, streaming=True)})
    got = list(served.channel.stream_stream("/t.T/List")(iter([b"go"]), timeout=30))
    assert got == [f"entry {i}".encode() for i in range(count)]
    assert len(served.writes) < count / 20, len(served.writes)  # gathered, not one write per message


def test_large_messages_both_ways_under_flow_control(serve: Any) -> None:
    blob = os.urandom(3 << 20)

    def mirror(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        yield from requests

    served = serve({"/t.T/Mirror": Method(mirror, streaming=True)})
    got = list(served.channel.stream_stream("/t.T/Mirror")(iter([blob] * 8), timeout=60))
    assert len(got) == 8 and all(m == blob for m in got)  # 24 MiB, past every window


def test_abort_unknown_method_and_a_failing_handler(serve: Any) -> None:
    def refuse(request: bytes, call: Call) -> bytes:
        call.abort(h2_server.NOT_FOUND, "secret mytoken not found: 100% sure, ünïcode")
        raise AssertionError("abort returns")

    def broken(request: bytes, call: Call) -> bytes:
        raise ValueError("a bug")

    served = serve({"/t.T/Refuse": Method(refuse, streaming=False), "/t.T/Broken": Method(broken, streaming=False)})
    with pytest.raises(grpc.RpcError) as caught:
        served.channel.unary_unary("/t.T/Refuse")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "secret mytoken not found: 100% sure, ünïcode"
    with pytest.raises(grpc.RpcError) as caught:
        served.channel.unary_unary("/t.T/Unknown")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as caught:
        served.channel.unary_unary("/t.T/Broken")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL and "a bug" in (caught.value.details() or "")


def test_a_cancelled_call_ends_its_handler(serve: Any) -> None:
    ended = threading.Event()
    sent = []

    def endless(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        try:
            while True:
                sent.append(1)
                yield b"x" * 1024
        finally:
            ended.set()

    served = serve({"/t.T/Endless": Method(endless, streaming=True)})
    call = served.channel.stream_stream("/t.T/Endless")(iter([b"go"]), timeout=30)
    next(call)
    call.cancel()
    assert ended.wait(10)  # its writes fail once the stream is reset: it is not left running
    count = len(sent)
    time.sleep(0.2)
    assert len(sent) == count


def test_close_ends_a_handler_waiting_for_requests(serve: Any) -> None:
    ended = threading.Event()

    def waiting(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        yield b"ready"
        try:
            for _ in requests:
                pass
        except h2_server._Gone:  # cut off, not ended by the peer
            ended.set()
            raise

    served = serve({"/t.T/Wait": Method(waiting, streaming=True)})
    requests_open = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"first"
        requests_open.wait(10)

    call = served.channel.stream_stream("/t.T/Wait")(requests(), timeout=30)
    assert next(call) == b"ready"
    assert served.server is not None
    served.server.close()
    assert ended.wait(10)
    requests_open.set()


def test_a_call_cut_off_is_not_a_call_ended(serve: Any) -> None:
    """A reset (Ctrl-C, a dropped session) raises in the handler's requests, so a tar export
    never takes half a stream for a whole one; a normal end just ends them."""
    outcome: list[str] = []
    seen = threading.Event()

    def receive(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        try:
            for _ in requests:
                seen.set()
            outcome.append("ended")
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        yield b"done"

    served = serve({"/t.T/Receive": Method(receive, streaming=True)})
    assert list(served.channel.stream_stream("/t.T/Receive")(iter([b"a", b"b"]), timeout=10)) == [b"done"]
    assert outcome == ["ended"]
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"part of a tar"
        hold.wait(10)

    call = served.channel.stream_stream("/t.T/Receive")(requests(), timeout=30)
    assert seen.wait(10)
    call.cancel()
    deadline = time.monotonic() + 10
    while len(outcome) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    hold.set()
    assert outcome[1] == "_Gone"


def test_the_window_of_a_cut_off_call_is_given_back(serve: Any) -> None:
    """Bytes a slow handler had not taken when its call was reset do not shrink the
    connection's window for the calls after it (or the session would stall)."""
    release = threading.Event()

    def slow(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        release.wait(10)
        yield from ()

    def count(requests: Iterator[bytes], call: Call) -> Iterator[bytes]:
        yield str(sum(len(m) for m in requests)).encode()

    served = serve({"/t.T/Slow": Method(slow, streaming=True), "/t.T/Count": Method(count, streaming=True)})
    blob = b"x" * (1 << 20)
    for _ in range(3):  # each leaves about 3 MiB held back: three would have used up the window
        cut = served.channel.stream_stream("/t.T/Slow")(iter([blob] * 7), timeout=30)
        time.sleep(1.0)  # 7 MiB sent to a handler that takes nothing
        cut.cancel()
    release.set()
    assert list(served.channel.stream_stream("/t.T/Count")(iter([blob] * 9), timeout=20)) == [str(9 << 20).encode()]
