"""How a connection reaches a Control service: through a Docker engine, or a buildkitd.

Docker engine (20.10 serves BuildKit's Control on its API): `POST /grpc` with
`Connection: Upgrade` and `Upgrade: h2c` answers `101 Switching Protocols`, and the same
connection then speaks HTTP/2 (gRPC) with us as the client; the engine's HTTP/2 server sends
its SETTINGS at once, so bytes may already sit in the HTTP client's read buffer after the
101 and must be passed on first. `upgrade` does this through `Engine.upgrade`: on a unix
socket with the standard library (`unix_http`, no SDK import), elsewhere with the Docker SDK's
own `APIClient`, so every engine it reaches (tcp, TLS, ssh://) works the same. The upgraded
connection is our gRPC client's connection (`h2_client`).

buildkitd: `unix://PATH` and `tcp://HOST:PORT`, with TLS (ALPN `h2`) when `TLS` files are
given.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...errors import EngineError, UpgradeRefused
from ...names import service_address
from ...records import record
from .h2_client import ByteStream, Connection

if TYPE_CHECKING:
    from ..client import Engine, Upgraded

CONNECT_TIMEOUT = 10.0


def upgrade(engine: Engine) -> Upgraded:
    """`POST /grpc` upgraded to h2c (see `Engine.upgrade`): BuildKit's Control service."""
    return engine.upgrade("/grpc", {"Upgrade": "h2c"})


def engine_session(engine: Engine, metadata: Sequence[tuple[str, str]]) -> Upgraded | None:
    """The engine's own `POST /session` upgraded to h2c, with a session's names (`metadata`)
    as headers, one line per method served; the engine is then the HTTP/2 client (see
    `session.EngineAttached`). None where it is not asked: an engine reached other than
    through its unix socket (the SDK's requests send one value per header name), or one that
    did not switch protocols (asked once per Engine). Such engines get `Control.Session`."""
    if not engine.over_unix_socket or engine.notes.get(NO_SESSION_ENDPOINT):
        return None
    try:
        return engine.upgrade("/session", [("Upgrade", "h2c"), *metadata])
    except UpgradeRefused:
        engine.remember(NO_SESSION_ENDPOINT, lambda: True)
        return None


NO_SESSION_ENDPOINT = "no /session"  # the engine's note: it did not switch protocols there


def engine_connection(engine: Engine, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A gRPC connection to the engine's BuildKit, through a fresh `POST /grpc` upgrade (over
    TLS, every TLS operation on one thread: `_TLSStream`)."""
    upgraded = upgrade(engine)
    stream: ByteStream = upgraded
    if isinstance(upgraded.sock, ssl.SSLSocket):
        stream = _upgraded_tls(upgraded, timeout, engine.address)
    connection = Connection(stream, name="compimg-grpc")
    if not connection.ready(timeout):
        connection.close()
        raise _no_http2(engine.address)
    return connection


def _no_http2(address: str, why: str = "") -> EngineError:
    return EngineError(f"cannot talk to BuildKit through the Docker engine at {address}: the upgraded /grpc "
                       f"connection did not answer HTTP/2{f' ({why})' if why else ''}")


def _upgraded_tls(upgraded: Upgraded, timeout: float, address: str) -> _TLSStream:
    """The upgraded TLS connection as a `_TLSStream`. The HTTP client's reader may hold bytes
    past the 101 (the engine's SETTINGS): one `read` of more than it can hold takes them all,
    or, holding none, waits for the SETTINGS every HTTP/2 server sends first."""
    sock = upgraded.sock
    try:
        sock.settimeout(timeout)
        first = upgraded.read(1 << 20)
    except OSError as exc:
        upgraded.close()
        raise _no_http2(address, str(exc)) from None
    return _TLSStream(sock, first=first, on_close=upgraded.close)


class _SocketStream:
    """A socket as `h2_client.ByteStream`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, size: int) -> bytes:
        return self.sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv (close does not)
        self.sock.close()


class _TLSStream:
    """A TLS socket as `h2_client.ByteStream`, every TLS operation on one thread of its own:
    OpenSSL does not promise that one connection may be read and written from two threads at
    once (the client reads on one and writes on others), and CPython 3.13.6 hung doing so
    (cpython#137583). Reads come from a queue; `sendall` waits until its bytes are written."""

    CHUNK = 256 << 10

    def __init__(self, sock: ssl.SSLSocket, *, first: bytes = b"",
                 on_close: Callable[[], object] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._on_close = on_close  # what else the connection holds (an HTTP response)
        self._wake_read, self._wake = socket.socketpair()
        self._wake_read.setblocking(False)
        self._incoming: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        if first:  # read before the stream was ours
            self._incoming.put(first)
        self._done = threading.Condition()
        self._out = bytearray()
        self._written = 0  # bytes written since the start
        self._queued = 0  # bytes handed to sendall since the start
        self._failed: OSError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="compimg-tls", daemon=True)
        self._thread.start()

    def read(self, size: int) -> bytes:
        item = self._incoming.get()
        if item is None or isinstance(item, BaseException):
            self._incoming.put(item)  # a second look sees the end too
            if isinstance(item, BaseException):
                raise OSError(f"TLS connection failed ({item})")
            return b""
        return item

    def sendall(self, data: bytes) -> None:
        with self._done:
            if self._failed is not None or self._closed:
                raise self._failed or OSError("TLS connection closed")
            self._out += data
            self._queued += len(data)
            target = self._queued
            self._wake.send(b"w")
            while self._written < target and self._failed is None and not self._closed:
                self._done.wait()
            if self._written < target:
                raise self._failed or OSError("TLS connection closed")

    def close(self) -> None:
        with self._done:
            self._closed = True
            self._done.notify_all()
        with contextlib.suppress(OSError):
            self._wake.send(b"c")
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        for end in (self._wake, self._wake_read):
            end.close()
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                self._on_close()

    def _run(self) -> None:
        want_write = False  # a TLS read asked to write first (or the other way round)
        try:
            if self.sock.pending():  # decrypted before the stream was ours: select would not say so
                want_write = self._receive()
            while not self._closed:
                with self._done:
                    pending = bool(self._out)
                writers = [self.sock] if pending or want_write else []
                readable, writable, _ = select.select([self.sock, self._wake_read], writers, [])
                if self._wake_read in readable:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_read.recv(4096)
                if self.sock in readable or (want_write and writable):
                    want_write = self._receive()
                if self.sock in writable and pending:
                    self._send()
        except BaseException as exc:  # the reader sees it; writers see it too
            with self._done:
                self._failed = exc if isinstance(exc, OSError) else OSError(str(exc))
                self._done.notify_all()
            self._incoming.put(exc)
        finally:
            with self._done:
                self._closed = True
                self._done.notify_all()
            self._incoming.put(None)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _receive(self) -> bool:
        """Read what TLS has now; True if it must write before it can read on."""
        while True:
            try:
                data = self.sock.recv(self.CHUNK)
            except ssl.SSLWantReadError:
                return False
            except ssl.SSLWantWriteError:
                return True
            if not data:
                self._closed = True
                return False
            self._incoming.put(data)
            if not self.sock.pending():
                return False

    def _send(self) -> None:
        with self._done:
            chunk = bytes(self._out[:self.CHUNK])
        try:
            sent = self.sock.send(chunk)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        with self._done:
            del self._out[:sent]
            self._written += sent
            self._done.notify_all()


@record
class TLS:
    """TLS files for a buildkitd: `ca` checks the server; `cert` and `key` are our client
    certificate (both or neither); `server_name` overrides the name checked."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


def _read(path: str | None, what: str) -> None:
    """Check that a TLS file can be read, for a line that names it."""
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise EngineError(f"cannot read the TLS {what} {path} ({exc.strerror})") from None


def _tls_context(tls: TLS) -> ssl.SSLContext:
    _read(tls.ca, "CA file")
    _read(tls.cert, "certificate")
    _read(tls.key, "key")
    try:
        context = ssl.create_default_context(cafile=tls.ca)
    except ssl.SSLError as exc:
        raise EngineError(f"cannot use the TLS CA file {tls.ca}: it holds no PEM certificate ({exc.reason or exc}); "
                          "give the CA certificate that signed the server's") from None
    context.set_alpn_protocols(["h2"])
    if tls.cert and tls.key:
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (ssl.SSLError, OSError) as exc:
            raise EngineError(f"cannot use the TLS certificate {tls.cert} with the key {tls.key} ({exc})") from None
    return context


def service_connection(address: str, tls: TLS | None = None, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A gRPC connection to a buildkitd at `unix://PATH` or `tcp://HOST:PORT` (with `tls`),
    made now, so that a wrong address or TLS setup is one line here and not a gRPC error
    later. Tells "nothing listens" from "it listens but we cannot talk"."""
    parsed = service_address(address)
    if parsed is None:
        shape = "tcp://host:port" if address.startswith("tcp://") else "unix:///path/to/buildkitd.sock or tcp://host:port"
        raise EngineError(f"BuildKit address {address!r}: write {shape}")
    kind, host, port = parsed
    if kind == "unix" and tls is not None:
        raise EngineError(f"{address}: TLS is for tcp:// addresses only")
    if tls is not None and (tls.cert is None) != (tls.key is None):
        raise EngineError(f"{address}: give both a TLS client certificate and its key, or neither")
    context = _tls_context(tls) if tls is not None else None
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(host)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise EngineError(f"cannot reach BuildKit at {address} ({why}); check the address and that buildkitd "
                          "listens there") from None
    cannot_talk = (f"cannot talk to BuildKit at {address}: something listens but the TLS handshake or gRPC failed; "
                   "check that the CA, certificate and key match the server's TLS setup" if tls is not None else
                   f"cannot talk to BuildKit at {address}: something listens but does not answer gRPC without TLS; "
                   "check the address, or give the server's TLS files")
    if context is not None:
        assert tls is not None
        try:
            sock = context.wrap_socket(sock, server_hostname=tls.server_name or host.strip("[]"))
        except (ssl.SSLError, OSError):
            sock.close()
            raise EngineError(cannot_talk) from None
    sock.settimeout(None)
    stream = _TLSStream(sock) if isinstance(sock, ssl.SSLSocket) else _SocketStream(sock)
    connection = Connection(stream, authority=host if kind == "tcp" else "localhost", name="compimg-buildkitd")
    if not connection.ready(timeout):
        connection.close()
        raise EngineError(cannot_talk)
    return connection


__all__ = ["TLS", "engine_connection", "service_connection", "upgrade"]
