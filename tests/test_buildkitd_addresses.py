"""A buildkitd address that does not work is one line (engine/control/transport.py, `connect`),
without an engine: nothing listens, something listens but speaks no gRPC (with and without
TLS), a misspelt address, TLS files that cannot be read or do not pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from invoke_compimg.engine.control import client
from invoke_compimg.engine.control.transport import TLS
from invoke_compimg.errors import EngineError

QUICK = 0.5  # seconds to wait for a channel that will not come up


@pytest.fixture
def mute() -> Iterator[str]:
    """tcp://127.0.0.1:PORT where a server accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_nothing_listening_on_a_unix_socket(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/buildkitd.sock"
    with pytest.raises(EngineError) as caught:
        client.connect(address, timeout=QUICK)
    assert str(caught.value) == (f"cannot reach BuildKit at {address} (No such file or directory); check the address "
                                 "and that buildkitd listens there")


def test_nothing_listening_on_a_port() -> None:
    """Said as soon as the connection is refused, not after gRPC's wait (the default timeout)."""
    import time

    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        client.connect(address)
    assert time.monotonic() - started < client_timeout() / 2
    assert str(caught.value) == (f"cannot reach BuildKit at {address} (Connection refused); check the address and "
                                 "that buildkitd listens there")


def test_something_listens_that_speaks_no_grpc(mute: str) -> None:
    with pytest.raises(EngineError) as caught:
        client.connect(mute, timeout=QUICK)
    assert str(caught.value) == (f"cannot talk to BuildKit at {mute}: something listens but does not answer gRPC "
                                 "without TLS; check the address, or give the server's TLS files")


def test_something_listens_that_does_not_finish_a_tls_handshake(mute: str, tmp_path: Path) -> None:
    from test_control import _certificates

    ca, _, _ = _certificates(tmp_path)
    with pytest.raises(EngineError) as caught:
        client.connect(mute, tls=TLS(ca=str(ca)), timeout=QUICK)
    assert str(caught.value) == (f"cannot talk to BuildKit at {mute}: something listens but the TLS handshake or gRPC "
                                 "failed; check that the CA, certificate and key match the server's TLS setup")


def test_a_ca_file_that_holds_no_certificate(mute: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    with pytest.raises(EngineError) as caught:
        client.connect(mute, tls=TLS(ca=str(ca)), timeout=QUICK)
    assert str(caught.value).startswith(f"cannot use the TLS CA file {ca}: it holds no PEM certificate (")


@pytest.mark.parametrize(("address", "tls", "message"), [
    ("http://buildkitd:1234", None,
     "BuildKit address 'http://buildkitd:1234': write unix:///path/to/buildkitd.sock or tcp://host:port"),
    ("tcp://buildkitd", None, "BuildKit address 'tcp://buildkitd': write tcp://host:port"),
    ("tcp://:1234", None, "BuildKit address 'tcp://:1234': write tcp://host:port"),
    ("unix:///run/buildkit/buildkitd.sock", TLS(ca="/ca.pem"),
     "unix:///run/buildkit/buildkitd.sock: TLS is for tcp:// addresses only"),
    ("tcp://buildkitd:1234", TLS(cert="/cert.pem"),
     "tcp://buildkitd:1234: give both a TLS client certificate and its key, or neither"),
    ("tcp://buildkitd:1234", TLS(ca="/nonexistent/ca.pem"),
     "cannot read the TLS CA file /nonexistent/ca.pem (No such file or directory)"),
])
def test_an_address_or_tls_setup_we_cannot_use(address: str, tls: TLS | None, message: str) -> None:
    with pytest.raises(EngineError) as caught:
        client.connect(address, tls=tls, timeout=QUICK)
    assert str(caught.value) == message


def test_either_an_address_or_an_engine() -> None:
    with pytest.raises(ValueError, match="give either address or engine"):
        client.connect()


def client_timeout() -> float:
    import inspect

    return float(inspect.signature(client.connect).parameters["timeout"].default)
