"""How a gRPC channel reaches a Control service: through a Docker engine, or a buildkitd.

Docker engine (20.10 serves BuildKit's Control on its API): `POST /grpc` with
`Connection: Upgrade` and `Upgrade: h2c` answers `101 Switching Protocols`, and the same
connection then speaks HTTP/2 (gRPC) with us as the client; the engine's HTTP/2 server sends
its SETTINGS at once, so bytes may already sit in the HTTP client's read buffer after the
101 and must be passed on first. `upgrade` does this through `Engine.upgrade`: on a unix
socket with the standard library (`unix_http`, no SDK import), elsewhere with the Docker SDK's
own `APIClient`, so every engine it reaches (tcp, TLS, ssh://) works the same. grpcio cannot be
handed a socket, so `EngineBridge` listens on a unix socket in a private folder (0700) and
pipes each connection grpcio makes into a fresh upgraded engine connection.

buildkitd: `unix://PATH` and `tcp://HOST:PORT`, straight to grpcio, with TLS when `TLS`
files are given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import EngineError
from ...names import service_address
from ...procs import socket_folder

if TYPE_CHECKING:
    from ..client import Engine, Upgraded

CONNECT_TIMEOUT = 10.0
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
    ("grpc.use_local_subchannel_pool", 1),  # one connection of our own, never shared with another channel
]


def upgrade(engine: Engine) -> Upgraded:
    """`POST /grpc` upgraded to h2c (see `Engine.upgrade`): BuildKit's Control service."""
    return engine.upgrade("/grpc", {"Upgrade": "h2c"})


def _pipe(read: Callable[[int], bytes], write: Callable[[bytes], None], done: Callable[[], None]) -> None:
    try:
        while True:
            data = read(256 * 1024)
            if not data:
                break
            write(data)
    except (OSError, ValueError):  # closed under us
        pass
    finally:
        done()


class EngineBridge:
    """A unix socket (in a private folder) whose every connection is piped into a fresh
    `upgrade` of the engine; `first` (an already made upgrade) serves the first one."""

    def __init__(self, engine: Engine, first: Upgraded | None = None) -> None:
        self.engine = engine
        self.pending = first
        try:
            self.folder = socket_folder("grpc")
        except OSError as exc:
            raise EngineError(f"cannot make a folder for BuildKit's connection ({exc}); check TMPDIR") from None
        self.path = os.path.join(self.folder, "engine.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(self.path)
            self.listener.listen(8)
        except OSError as exc:
            self.listener.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise EngineError(f"cannot listen on {self.path} for BuildKit's connection ({exc})") from None
        self.lock = threading.Lock()
        self.open: list[tuple[socket.socket, Upgraded]] = []
        self.threads: list[threading.Thread] = []
        self.closed = False
        self.acceptor = threading.Thread(target=self._accept, name="compimg-grpc-bridge", daemon=True)
        self.acceptor.start()

    @property
    def target(self) -> str:
        return f"unix:{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    client.close()
                    return
                engine, self.pending = self.pending, None
            try:
                engine = engine or upgrade(self.engine)
            except EngineError:
                client.close()  # grpcio sees the connection fail and reports UNAVAILABLE
                continue
            self._serve(client, engine)

    def _serve(self, client: socket.socket, engine: Upgraded) -> None:
        def client_done() -> None:
            engine.shutdown_write()

        def engine_done() -> None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        with self.lock:
            self.open.append((client, engine))
            for target, args in ((_pipe, (client.recv, engine.sendall, client_done)),
                                 (_pipe, (engine.read, client.sendall, engine_done))):
                thread = threading.Thread(target=target, args=args, name="compimg-grpc-pipe", daemon=True)
                thread.start()
                self.threads.append(thread)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            pending, self.pending = self.pending, None
            connections, self.open = self.open, []
        if pending is not None:
            pending.close()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for client, engine in connections:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            engine.close()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class TLS:
    """TLS files for a buildkitd: `ca` checks the server; `cert` and `key` are our client
    certificate (both or neither); `server_name` overrides the name checked."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise EngineError(f"cannot read the TLS {what} {path} ({exc.strerror})") from None


def channel_for(address: str, tls: TLS | None = None) -> tuple[Any, str]:
    """A grpcio channel to a buildkitd at `unix://PATH` or `tcp://HOST:PORT` (not yet
    connected), and the grpc target it dials."""
    import grpc

    parsed = service_address(address)
    if parsed is None:
        shape = "tcp://host:port" if address.startswith("tcp://") else "unix:///path/to/buildkitd.sock or tcp://host:port"
        raise EngineError(f"BuildKit address {address!r}: write {shape}")
    kind, host, port = parsed
    if kind == "unix":
        if tls is not None:
            raise EngineError(f"{address}: TLS is for tcp:// addresses only")
        target = "unix:" + host
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS), target
    target = f"{host}:{port}"
    if tls is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS), target
    if (tls.cert is None) != (tls.key is None):
        raise EngineError(f"{address}: give both a TLS client certificate and its key, or neither")
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(tls.ca, "CA file"),
                                               private_key=_read(tls.key, "key"),
                                               certificate_chain=_read(tls.cert, "certificate"))
    options = list(CHANNEL_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, credentials, options=options), target


def wait_ready(channel: Any, address: str, tls: TLS | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect now, so that a wrong address or TLS setup is one line here and not a gRPC
    error later. Tells "nothing listens" from "it listens but we cannot talk"."""
    import grpc

    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return
    except grpc.FutureTimeoutError:
        pass
    reason = probe(address)
    if reason:
        raise EngineError(f"cannot reach BuildKit at {address} ({reason}); check the address and that buildkitd "
                          "listens there")
    if tls is not None:
        raise EngineError(f"cannot talk to BuildKit at {address}: something listens but the TLS handshake or "
                          "gRPC failed; check that the CA, certificate and key match the server's TLS setup")
    raise EngineError(f"cannot talk to BuildKit at {address}: something listens but does not answer gRPC "
                      "without TLS; check the address, or give the server's TLS files")


def probe(address: str) -> str | None:
    """Why a plain connection to `address` fails, or None if it connects."""
    try:
        parsed = service_address(address)
        if parsed is None:
            return "not an address"
        kind, host, port = parsed
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(host)
        else:
            with socket.create_connection((host.strip("[]"), port), timeout=3):
                pass
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


__all__ = ["TLS", "EngineBridge", "channel_for", "upgrade", "wait_ready"]
