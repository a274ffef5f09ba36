"""A recorded Docker engine for the fast tests, after httpx's MockTransport: a small HTTP
server on a unix socket that answers with responses recorded from the real engine.

Why a socket and not a requests transport adapter: the client side then runs exactly as it
does against dockerd. The SDK's own chunked-stream reader (`_stream_helper`, which looks
into http.client's chunk state), its error mapping (`_raise_for_status`), the hijacked socket
of `attach` (`frames_iter`) and urllib3's connection handling are all the real code, fed
byte for byte what the engine sent, chunk boundaries included. And `DOCKER_HOST` reaches
every `Engine()` the package makes on its own (the Invoke tasks do) and subprocesses.

Two modes, one wire format (tests/data/engine/<scenario>.jsonl, one exchange a line):

- `RecordingProxy` sits between the code and the real engine, relays everything unchanged
  and writes down each exchange: method, path, query, what was sent (JSON, or the names
  and small text files of a tar), status, the headers that matter, and the body, the
  stream's chunks as the engine sent them, or the raw bytes after a protocol switch.
- `FakeEngine` replays a recording. Each request is matched to the first unused recorded
  exchange with the same method, path and query; a request the recording lacks is
  answered 599 and fails the test (`verify`, run by the fixture), naming the request.

`POST /grpc` (BuildKit's Control API, HTTP/2 after the 101) is recorded and replayed one gRPC
message at a time, session callbacks included: see tests/fake_control.py. Both modes also
offer a BuildKit service's address beside the engine (`service_address`), served the same way.

Volatile values are written as placeholders so a replay is deterministic. Values the code
makes (temporary container names, build IDs, inputs digests, the project's folder digest,
a registry's port) are `{{kind:N}}`, bound on first sight in a replayed request and
required to be the same value wherever the recording repeats them (and different where it
has different ones). Values of the machine (host name, process IDs) are `known`: filled in
at replay. What the engine makes (image and container IDs, timestamps) is kept as
recorded: the code only echoes it back, so it matches by itself.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from fake_control import Call, ControlRecorder, FakeControl, scrub_call

DATA = Path(__file__).resolve().parent / "data" / "engine"
KEPT_HEADERS = ("Content-Type", "Api-Version", "Docker-Experimental", "Ostype", "Server", "Upgrade")
UNEXPECTED_STATUS = 599

# Values the code makes, found by their shape (numbered in order of first appearance).
SHAPES: dict[str, str] = {
    "tmp": r"compimg-(?:tmp|shell)-[0-9a-f]{12}",
    "buildid": r"compimg-[0-9a-f]{32}",
    "inputs": r"(?<=--I-)[a-z][0-9a-f]{39}",
    "xref": r"(?<=--x-)\d+-\d+",  # an image's name for one extraction: process and thread
}
# What a placeholder of each kind may stand for when a replayed request binds it.
BINDS: dict[str, str] = {
    "tmp": SHAPES["tmp"], "buildid": SHAPES["buildid"], "inputs": r"[a-z][0-9a-f]{39}",
    "project": r"[a-z0-9][a-z0-9-]*-[0-9a-f]{8}", "unique": r"[a-z0-9][a-z0-9-]*", "registry": r"[a-z0-9.-]+:\d+",
    "xref": r"\d+-\d+",
    # BuildKit's gRPC API (fake_control): a solve's ref, a session's id and its shared key
    "ref": r"[0-9a-f]{26}", "session": r"[0-9a-f]{32}", "sharedkey": r"[0-9a-f]{32}",
}
PLACEHOLDER = re.compile(r"\{\{([a-z]+)(?::(\d+))?\}\}")


def known_values() -> dict[str, str]:
    """Placeholders of the machine, filled in at replay: this host, this process, and a
    process that has ended (the owner of a leftover container)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "deadpid": str(ended.pid)}


# --- the recording ----------------------------------------------------------------------------

@dataclass
class Exchange:
    """One request and the engine's answer."""

    method: str
    path: str  # unquoted, without the query
    query: dict[str, list[str]]
    status: int = 0
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sent: dict[str, Any] = field(default_factory=dict)  # what the request carried (see `describe`)
    body: str | None = None  # a whole body
    chunks: list[str] | None = None  # a chunked stream, one element a chunk
    raw: list[str] | None = None  # after 101 Switching Protocols: the engine's bytes as they came
    binary: bool = False  # body/chunks/raw are base64

    def to_json(self) -> dict[str, Any]:
        found = {k: v for k, v in self.__dict__.items() if v not in (None, False, {}, [])}
        found.setdefault("status", self.status)
        return found

    @staticmethod
    def from_json(data: dict[str, Any]) -> Exchange:
        return Exchange(**{"query": {}, **data})

    def pieces(self) -> list[bytes]:
        items = self.chunks if self.chunks is not None else self.raw if self.raw is not None else []
        return [self._decode(item) for item in items]

    def whole(self) -> bytes:
        return self._decode(self.body or "")

    def _decode(self, text: str) -> bytes:
        return base64.b64decode(text) if self.binary else text.encode("utf-8", "surrogateescape")

    @property
    def title(self) -> str:
        query = urllib.parse.urlencode(self.query, doseq=True)
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


def load(scenario: str, data: Path = DATA) -> list[Exchange | Call]:
    """A recording: HTTP exchanges and gRPC calls (lines with `grpc`), in the order they began."""
    path = data / f"{scenario}.jsonl"
    found: list[Exchange | Call] = []
    for line in path.read_text().splitlines():
        if line.strip():
            data_ = json.loads(line)
            found.append(Call.from_json(data_) if "grpc" in data_ else Exchange.from_json(data_))
    return found


def describe(body: bytes, content_type: str) -> dict[str, Any]:
    """What a request carried, for the log and the recording: JSON as JSON, a tar as its
    member names plus the text of its small text files (the Dockerfile sent, .dockerignore)."""
    if not body:
        return {}
    if "json" in content_type:
        with contextlib.suppress(ValueError):
            return {"json": json.loads(body)}
    if "tar" in content_type:
        files: dict[str, str | None] = {}
        with contextlib.suppress(tarfile.TarError), tarfile.open(fileobj=io.BytesIO(body)) as archive:
            for member in archive:
                text = None
                if member.isfile() and member.size < 4096 and (member.name.endswith("Dockerfile")
                                                               or member.name == ".dockerignore"):
                    handle = archive.extractfile(member)
                    text = handle.read().decode("utf-8", "replace") if handle else None
                files[member.name] = text
        return {"tar": files}
    return {"bytes": len(body)}


class Scrubber:
    """Rewrites volatile values of a recording into placeholders."""

    def __init__(self, exact: dict[str, str]) -> None:
        """`exact`: value -> the placeholder text that replaces it (`{{project}}`)."""
        self.exact = sorted(exact.items(), key=lambda item: -len(item[0]))  # longest first
        self.numbers: dict[tuple[str, str], int] = {}
        self.fields: dict[str, str] = {}  # values numbered by field (a session id): replaced anywhere

    def text(self, text: str) -> str:
        for value, replacement in [*self.exact, *self.fields.items()]:
            if value:
                text = text.replace(value, replacement)
        for kind, shape in SHAPES.items():
            text = re.sub(shape, lambda m, kind=kind: self.numbered(kind, m.group(0)), text)
        return text

    def numbered(self, kind: str, value: str) -> str:
        """`{{kind:N}}` for `value`: the same N for the same value, the next for a new one."""
        number = self.numbers.setdefault((kind, value), 1 + sum(1 for k, _ in self.numbers if k == kind))
        if kind not in SHAPES:  # numbered by the field it came in: found in any other text too
            self.fields[value] = f"{{{{{kind}:{number}}}}}"
        return f"{{{{{kind}:{number}}}}}"

    def exchange(self, found: Exchange) -> Exchange:
        def deep(value: Any) -> Any:
            if isinstance(value, str):
                return self.text(value)
            if isinstance(value, list):
                return [deep(v) for v in value]
            if isinstance(value, dict):
                return {self.text(k): deep(v) for k, v in value.items()}
            return value

        found.path = self.text(found.path)
        found.query = deep(found.query)
        found.sent = deep(found.sent)
        if not found.binary:
            found.body = None if found.body is None else self.text(found.body)
            found.chunks = None if found.chunks is None else [self.text(c) for c in found.chunks]
        return found


# --- reading and writing HTTP by hand -----------------------------------------------------------

def read_head(stream: Any) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """A response's status line and headers from a binary file."""
    raw = stream.readline()
    if not raw:
        raise ConnectionError("the engine closed the connection")
    _, status, *reason = raw.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    head = raw
    while True:
        line = stream.readline()
        head += line
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return int(status), (reason[0] if reason else ""), headers, head


def read_chunks(stream: Any) -> Iterator[bytes]:
    """The chunks of a chunked body, as sent."""
    while True:
        size_line = stream.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        data = stream.read(size)
        stream.readline()
        yield data


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def header(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name.lower()), "")


# --- the server both modes share ------------------------------------------------------------------

class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the code closed its end (a response it stopped reading): as dockerd, carry on
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b"".join(read_chunks(self.rfile))
        else:
            body = self.rfile.read(int(length)) if length else b""
        self.server.owner.serve(self, body)

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _serve

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # the server is silent
        pass


def refused_session(handler: _Handler, path: str) -> bool:
    """Answer `POST /session` (the engine's own session connection, upgraded to h2c, on which
    the engine is the HTTP/2 client) as an engine that does not serve it, and say so. The
    recordings hold sessions as Control.Session calls, replayed one gRPC message at a time; the
    engine's raw HTTP/2 on /session could not be replayed (its stream ids, window updates and
    health checks vary run to run). The code then takes Control.Session, as it does on such an
    engine; tests/test_session_connection.py and tests/test_buildkit.py cover /session."""
    if handler.command != "POST" or not re.fullmatch(r"(/v[0-9.]+)?/session", path):
        return False
    body = b'{"message":"page not found"}\n'
    handler.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    handler.wfile.flush()
    handler.server.owner.session_refusals += 1
    return True


class _Socket:
    """A server on a fresh unix socket, run on a thread."""

    session_refusals = 0  # `POST /session` requests answered 404 (see `refused_session`)

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="compimg-fake-")
        self.path = os.path.join(self.folder, "engine.sock")
        self.server = _Server(self.path, _Handler)
        self.server.owner = self
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True, name="fake-engine")
        self.thread.start()
        self._service: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    def service_address(self) -> str:
        """A BuildKit service's address (`unix://...`, as `--buildkit-host` takes it) beside the
        engine: each connection is gRPC from its first byte (`serve_service`)."""
        path = os.path.join(self.folder, "buildkitd.sock")
        if self._service is None:
            self._service = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._service.bind(path)
            self._service.listen(8)
            threading.Thread(target=self._accept_service, args=(self._service,), daemon=True,
                             name="fake-buildkitd").start()
        return f"unix://{path}"

    def _accept_service(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._service_connection, args=(conn,), daemon=True,
                             name="fake-buildkitd-conn").start()

    def _service_connection(self, conn: socket.socket) -> None:
        try:
            self.serve_service(conn)
        finally:
            conn.close()

    def serve_service(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def engine(self, **environment: str) -> Any:
        from invoke_compimg.engine.client import Engine

        return Engine({"DOCKER_HOST": self.address, **environment})

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._service is not None:
            with contextlib.suppress(OSError):
                self._service.shutdown(socket.SHUT_RDWR)
            self._service.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def serve(self, handler: _Handler, body: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def split(handler: _Handler) -> tuple[str, dict[str, list[str]]]:
        parsed = urllib.parse.urlsplit(handler.path)
        return urllib.parse.unquote(parsed.path), urllib.parse.parse_qs(parsed.query, keep_blank_values=True)


# --- recording --------------------------------------------------------------------------------

@dataclass
class Hook:
    """Do `action` once a stream of `method path` has delivered `after` chunks (or raw
    pieces, or StatusResponses of a gRPC Status: method `GRPC`); in a replay, then hold the
    rest until a request whose `METHOD path` matches `hold_until` came."""

    method: str
    path: str  # a regex searched in the path
    after: int
    action: Callable[[], None]
    hold_until: str | None = None
    containing: bytes | None = None  # ... and a piece holding these bytes went out
    fired: bool = False

    def due(self, method: str, path: str, count: int, piece: bytes) -> bool:
        return (not self.fired and self.method == method and re.search(self.path, path) is not None
                and count >= self.after and (self.containing is None or self.containing in piece))


class RecordingProxy(_Socket):
    """Relays to the real engine at `target` (a unix socket path) and writes down each exchange.
    `POST /grpc` is relayed one gRPC call at a time (fake_control.ControlRecorder), or, with
    `refuse_grpc`, answered as the engine answers a path it does not serve."""

    def __init__(self, target: str = "/var/run/docker.sock", *, refuse_grpc: bool = False) -> None:
        self.target = target
        self.refuse_grpc = refuse_grpc
        self.records: list[Exchange | Call] = []  # in the order they began
        self.hooks: list[Hook] = []
        self.drops = 0  # sessions still to lose on purpose (see `drop_sessions`)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        super().__init__()

    @property
    def exchanges(self) -> list[Exchange]:
        return [r for r in self.records if isinstance(r, Exchange)]

    @property
    def calls(self) -> list[Call]:
        return [r for r in self.records if isinstance(r, Call)]

    def drop_sessions(self, count: int) -> None:
        """The next `count` Control.Session streams are never passed on to the engine: the
        solves that name them find no session (BuildKit's own error, for the retry)."""
        self.drops = count

    def serve_service(self, conn: socket.socket) -> None:
        """A connection to `service_address`: relayed call by call to the engine's own Control
        through a `POST /grpc` of its own, which is not written down (a buildkitd has no HTTP)."""
        engine = socket.socket(socket.AF_UNIX)
        try:
            engine.connect(self.target)
            engine.sendall(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                           b"Content-Length: 0\r\n\r\n")
            stream = engine.makefile("rb")
            status, *_ = read_head(stream)
            if status == 101:
                ControlRecorder(self, stream.read1, engine).serve(conn.recv, conn)
        finally:
            engine.close()

    # --- what fake_control.ControlRecorder writes down ------------------------------------------
    def add(self, call: Call) -> Call:
        with self._lock:
            self.records.append(call)
        return call

    def take_drop(self) -> bool:
        with self._lock:
            if self.drops > 0:
                self.drops -= 1
                return True
        return False

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A gRPC call in flight (`settle` waits for it)."""
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def settle(self, timeout: float = 120) -> None:
        """Wait until no exchange is in flight (a stream the code left still runs to its end)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout):
                raise AssertionError(f"{self._inflight} exchange(s) still running after {timeout}s")

    def when(self, method: str, path: str, after: int, action: Callable[[], None],
             hold_until: str | None = None, containing: bytes | None = None) -> None:
        self.hooks.append(Hook(method, path, after, action, hold_until, containing))

    def save(self, scenario: str, exact: dict[str, str], data: Path = DATA) -> Path:
        scrubber = Scrubber(exact)
        data.mkdir(parents=True, exist_ok=True)
        path = data / f"{scenario}.jsonl"
        with path.open("w") as out:
            for found in self.records:
                scrubbed = scrub_call(found, scrubber) if isinstance(found, Call) else scrubber.exchange(found)
                out.write(json.dumps(scrubbed.to_json(), sort_keys=True) + "\n")
        return path

    def serve(self, handler: _Handler, body: bytes) -> None:
        path, query = self.split(handler)
        if refused_session(handler, path):
            return
        found = Exchange(handler.command, path, query, sent=describe(body, handler.headers.get("Content-Type", "")))
        grpc = path.endswith("/grpc") and handler.headers.get("Upgrade", "").lower() == "h2c"
        with self._lock:
            self.records.append(found)
            self._inflight += not grpc  # a gRPC connection lasts as long as its Engine: its calls count
        upgrade = handler.headers.get("Upgrade")
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(self.target)
        try:
            target = handler.path
            if grpc and self.refuse_grpc:  # the engine's own answer to a path it does not serve
                target, upgrade = handler.path.replace("/grpc", "/compimg-not-served", 1), None
            lines = [f"{handler.command} {target} HTTP/1.1"]
            for name, value in handler.headers.items():
                if name.lower() in ("connection", "content-length", "transfer-encoding") or (
                        name.lower() == "upgrade" and not upgrade):
                    continue
                lines.append(f"{name}: {value}")
            lines.append("Connection: Upgrade" if upgrade else "Connection: close")
            lines.append(f"Content-Length: {len(body)}")
            engine.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            stream = engine.makefile("rb")
            status, reason, headers, _ = read_head(stream)
            found.status, found.reason = status, reason
            found.headers = {k: v for k, v in headers if k in KEPT_HEADERS}
            self._relay(handler, found, stream, engine, headers)
        finally:
            engine.close()
            with self._idle:
                self._inflight -= not grpc
                self._idle.notify_all()

    def _relay(self, handler: _Handler, found: Exchange, stream: Any, engine: socket.socket,
               headers: list[tuple[str, str]]) -> None:
        out = handler.wfile
        kept = [(k, v) for k, v in headers if k.lower() not in ("connection", "date", "content-length",
                                                                  "transfer-encoding")]
        chunked = header(headers, "Transfer-Encoding").lower() == "chunked"
        if found.status == 101:
            head = [f"HTTP/1.1 101 {found.reason}", *(f"{k}: {v}" for k, v in kept), "Connection: Upgrade"]
            out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            out.flush()
            handler.close_connection = True
            if header(headers, "Upgrade").lower() == "h2c":  # BuildKit's gRPC API: written down call by call
                ControlRecorder(self, stream.read1, engine).serve(handler.rfile.read1, handler.connection)
                return
            found.raw = []
            found.binary = True
            self._pipe(handler, found, stream, engine)
            return
        if chunked:
            head = [f"HTTP/1.1 {found.status} {found.reason}", *(f"{k}: {v}" for k, v in kept),
                    "Transfer-Encoding: chunked"]
            out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            out.flush()
            pieces: list[bytes] = []
            try:
                for data in read_chunks(stream):
                    pieces.append(data)
                    out.write(chunk(data))
                    out.flush()
                    self.fire(found.method, found.path, len(pieces), data)
                out.write(b"0\r\n\r\n")
                out.flush()
            except (BrokenPipeError, ConnectionResetError):  # the code closed the response: so do we
                handler.close_connection = True
            self._store(found, pieces, "chunks")
            return
        length = header(headers, "Content-Length")
        data = stream.read(int(length)) if length else (b"" if found.status in (204, 304) else stream.read())
        head = [f"HTTP/1.1 {found.status} {found.reason}", *(f"{k}: {v}" for k, v in kept),
                f"Content-Length: {len(data)}"]
        out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        out.flush()
        self._store(found, [data], "body")

    def _pipe(self, handler: _Handler, found: Exchange, stream: Any, engine: socket.socket) -> None:
        """After a protocol switch: both ways until the engine ends, keeping what it sent."""
        client = handler.connection

        def upstream() -> None:
            with contextlib.suppress(OSError, ValueError):
                while data := handler.rfile.read1(65536):
                    engine.sendall(data)
                engine.shutdown(socket.SHUT_WR)

        threading.Thread(target=upstream, daemon=True).start()
        pieces: list[bytes] = []
        with contextlib.suppress(OSError):
            while data := stream.read1(65536):
                pieces.append(data)
                client.sendall(data)
                self.fire(found.method, found.path, len(pieces), data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
        found.raw = [base64.b64encode(p).decode() for p in pieces]

    def fire(self, method: str, path: str, count: int, piece: bytes) -> None:
        for hook in self.hooks:
            if hook.due(method, path, count, piece):
                hook.fired = True
                hook.action()

    @staticmethod
    def _store(found: Exchange, pieces: list[bytes], where: str) -> None:
        try:
            if "tar" in found.headers.get("Content-Type", ""):
                raise UnicodeDecodeError("utf-8", b"", 0, 0, "an archive is kept as bytes")
            texts = [p.decode("utf-8") for p in pieces]
        except UnicodeDecodeError:
            texts = [base64.b64encode(p).decode() for p in pieces]
            found.binary = True
        if where == "chunks":
            found.chunks = texts
        else:
            found.body = texts[0]


# --- replaying --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request the code sent to the fake, as it sent it."""

    method: str
    path: str
    query: dict[str, list[str]]
    sent: dict[str, Any]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def __str__(self) -> str:
        query = urllib.parse.urlencode(self.query, doseq=True)
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


class Mismatch(AssertionError):
    pass


class FakeEngine(_Socket):
    """Answers with the exchanges recorded in tests/data/engine/<scenario>.jsonl; a `POST
    /grpc` recorded as switched to h2c is answered 101 and served by `FakeControl` from the
    recording's gRPC calls. The log holds the code's HTTP requests, its gRPC calls (method
    `GRPC`, path the method's, `sent["json"]` the message), a cancelled Solve (`CANCEL`)
    and what the daemon's calls on a session found (`CALLBACK`, see fake_daemon)."""

    def __init__(self, scenario: str, *, known: dict[str, str] | None = None, data: Path = DATA) -> None:
        self.scenario = scenario
        records = load(scenario, data)
        self.exchanges = [r for r in records if isinstance(r, Exchange)]
        self.used = [False] * len(self.exchanges)
        self.calls = [r for r in records if isinstance(r, Call)]
        self.calls_used = [False] * len(self.calls)
        self.reconnects = 0  # `POST /grpc` answered again after a cut connection
        self.control: FakeControl | None = None
        self.known = known if known is not None else known_values()
        self.bound: dict[str, str] = {}
        self.log: list[Request] = []
        self.problems: list[str] = []
        self.hooks: list[Hook] = []
        self.cuts: list[tuple[str, str, int]] = []
        self.replacements: list[tuple[str, str, Exchange]] = []
        self._arrived = threading.Condition()
        self._lock = threading.Lock()
        super().__init__()

    # --- what a test arranges ------------------------------------------------------------
    def when(self, method: str, path: str, after: int, action: Callable[[], None],
             hold_until: str | None = None, containing: bytes | None = None) -> None:
        """Run `action` once `after` chunks of the matching stream went out (and one held
        `containing`); with `hold_until`, send the rest only after a request whose `METHOD
        path` matches it came."""
        self.hooks.append(Hook(method, path, after, action, hold_until, containing))

    def cut(self, method: str, path: str, after: int) -> None:
        """The engine is lost during the next matching request: its stream breaks off after
        `after` chunks (a whole body: before any answer), the connection closed mid-way.
        `GRPC` and a method's path: every gRPC connection breaks off after `after` messages
        of that call's stream (a client may then connect again: one more `POST /grpc`)."""
        self.cuts.append((method, path, after))
        if method == "GRPC":
            self.reconnects += 1

    def answer_with(self, method: str, path: str, exchange: Exchange) -> None:
        """Answer the matching request with another recorded exchange (an engine's real
        refusal, recorded elsewhere) instead of this recording's."""
        self.replacements.append((method, path, exchange))

    # --- what a test reads -------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str = "") -> list[Request]:
        """Requests the code sent, in order (`path` is a regex searched in the path)."""
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and re.search(path, r.path)]

    def verify(self, *, all_used: bool = True) -> None:
        """Fail naming every request the recording lacked (and, with `all_used`, every
        recorded exchange or gRPC call the code never asked for)."""
        with self._lock:
            problems = list(self.problems)
            if all_used and not problems:
                problems += [f"recorded but never requested: {e.title}"
                             for e, used in zip(self.exchanges, self.used, strict=True) if not used]
                problems += [f"recorded but never called: {c.title}"
                             for c, used in zip(self.calls, self.calls_used, strict=True) if not used]
        if problems:
            raise Mismatch(f"fake engine ({self.scenario}): " + "; ".join(problems))

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        super().close()

    def serve_service(self, conn: socket.socket) -> None:
        """A connection to `service_address`: served by the recording's gRPC calls, as a
        `POST /grpc` connection is."""
        self.grpc().serve(conn.recv, conn)

    def grpc(self) -> FakeControl:
        with self._lock:
            if self.control is None:
                self.control = FakeControl(self)
            return self.control

    # --- what FakeControl shares -----------------------------------------------------------------
    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)
        with self._arrived:
            self._arrived.notify_all()

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def fill(self, text: str) -> str:
        return self._fill(text)

    def fit_text(self, template: str, actual: str) -> bool:
        """Does `actual` read as the recorded `template` (binding its placeholders)?"""
        with self._lock:
            found = self._fit(template, actual, {})
            if found is not None:
                self.bound.update(found)
        return found is not None

    def take_cut(self, method: str, path: str) -> int | None:
        with self._lock:
            for index, (cut_method, pattern, after) in enumerate(self.cuts):
                if cut_method == method and re.search(pattern, path):
                    del self.cuts[index]
                    return after
        return None

    def run_hooks(self, request: Request, count: int, piece: bytes) -> None:
        self._hooks(request, count, piece)

    # --- serving -----------------------------------------------------------------------------
    def serve(self, handler: _Handler, body: bytes) -> None:
        path, query = self.split(handler)
        if refused_session(handler, path):
            return
        request = Request(handler.command, path, query, describe(body, handler.headers.get("Content-Type", "")))
        with self._lock:
            self.log.append(request)
            found = self._match(request)
            if found is None:
                self.problems.append(f"unexpected request {request}")
        with self._arrived:
            self._arrived.notify_all()
        if found is None:
            message = json.dumps({"message": f"fake engine: the recording {self.scenario} has no {request}"})
            self._send_head(handler, UNEXPECTED_STATUS, "Not Recorded", {"Content-Type": "application/json"},
                            length=len(message))
            handler.wfile.write(message.encode())
            return
        for method, pattern, other in self.replacements:
            if method == found.method and re.search(pattern, path):
                found = other
                break
        if found.status == 101 and found.headers.get("Upgrade", "").lower() == "h2c" and found.raw is None:
            self._send_head(handler, 101, found.reason, {k: self._fill(v) for k, v in found.headers.items()})
            handler.close_connection = True
            self.grpc().serve(handler.rfile.read1, handler.connection)
            return
        try:
            self._answer(handler, request, found)
        except Mismatch as exc:
            with self._lock:
                self.problems.append(str(exc))
            handler.close_connection = True

    def _match(self, request: Request) -> Exchange | None:
        for index, candidate in enumerate(self.exchanges):
            if self.used[index] or candidate.method != request.method:
                continue
            bindings = self._bind(candidate, request)
            if bindings is not None:
                self.used[index] = True
                self.bound.update(bindings)
                return candidate
        if self.reconnects and request.method == "POST" and request.path.endswith("/grpc"):
            again = next((e for e in self.exchanges if e.status == 101 and e.path == request.path), None)
            if again is not None:  # the client reconnects after a connection the test cut
                self.reconnects -= 1
                return again
        return None

    def _bind(self, recorded: Exchange, request: Request) -> dict[str, str] | None:
        pairs = [(recorded.path, request.path)]
        if sorted(recorded.query) != sorted(request.query):
            return None
        for key, values in recorded.query.items():
            actual = request.query[key]
            if len(values) != len(actual):
                return None
            pairs += list(zip(values, actual, strict=True))
        bindings: dict[str, str] = {}
        for template, actual in pairs:
            found = self._fit(template, actual, bindings)
            if found is None:
                return None
            bindings = found
        return bindings

    def _fit(self, template: str, actual: str, bindings: dict[str, str]) -> dict[str, str] | None:
        """Bindings under which `template` reads `actual`, extending `bindings`, or None."""
        pattern, names, position = "", [], 0
        for match in PLACEHOLDER.finditer(template):
            pattern += re.escape(template[position:match.start()])
            name = match.group(0)[2:-2]
            value = self.known.get(match.group(1)) if match.group(2) is None else None
            value = value if value is not None else bindings.get(name, self.bound.get(name))
            if value is not None:
                pattern += re.escape(value)
            else:
                group = f"g{len(names)}"
                pattern += f"(?P<{group}>{BINDS.get(match.group(1), '.+?')})"
                names.append((group, name))
            position = match.end()
        pattern += re.escape(template[position:])
        found = re.fullmatch(pattern, actual)
        if found is None:
            return None
        result = dict(bindings)
        taken = {v: k for k, v in {**self.bound, **bindings}.items()}
        for group, name in names:
            value = found.group(group)
            if result.get(name, value) != value or taken.get(value, name) != name:
                return None  # one placeholder, one value; two placeholders, two values
            result[name] = value
            taken[value] = name
        return result

    def _fill(self, text: str) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(0)[2:-2]
            found = self.known.get(name) if match.group(2) is None else None
            found = found if found is not None else self.bound.get(name)
            if found is None:
                raise Mismatch(f"the recorded answer needs {match.group(0)}, which no request has named yet")
            return found

        return PLACEHOLDER.sub(value, text)

    def _payload(self, recorded: Exchange, data: bytes) -> bytes:
        return data if recorded.binary else self._fill(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape")

    def _send_head(self, handler: _Handler, status: int, reason: str, headers: dict[str, str], *,
                   length: int | None = None, chunked: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None:
            lines.append(f"Content-Length: {length}")
        if status == 101:
            lines.append("Connection: Upgrade")
        handler.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        handler.wfile.flush()

    def _answer(self, handler: _Handler, request: Request, recorded: Exchange) -> None:
        headers = {k: self._fill(v) for k, v in recorded.headers.items()}
        cut = None
        with self._lock:
            for index, (method, pattern, after) in enumerate(self.cuts):
                if method == request.method and re.search(pattern, request.path):
                    cut = after
                    del self.cuts[index]  # once
                    break
        if recorded.raw is not None:
            self._send_head(handler, recorded.status, recorded.reason, headers)
            # The engine's bytes after a switch come when the code's next call made them (the
            # container's output after `start`); sent at once they would sit unread in the
            # buffer that read the head, before the SDK took the socket over.
            seen = len(self.log)
            with self._arrived:
                self._arrived.wait_for(lambda: len(self.log) > seen, timeout=5)
            self._stream(handler, request, recorded, [self._payload(recorded, p) for p in recorded.pieces()],
                         cut, framed=False)
            handler.close_connection = True
            return
        if recorded.chunks is not None:
            self._send_head(handler, recorded.status, recorded.reason, headers, chunked=True)
            self._stream(handler, request, recorded, [self._payload(recorded, p) for p in recorded.pieces()],
                         cut, framed=True)
            return
        if cut is not None:  # lost before it answered
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        data = self._payload(recorded, recorded.whole())
        self._send_head(handler, recorded.status, recorded.reason, headers, length=len(data))
        handler.wfile.write(data)
        handler.wfile.flush()

    def _stream(self, handler: _Handler, request: Request, recorded: Exchange, pieces: list[bytes],
                cut: int | None, *, framed: bool) -> None:
        out = handler.wfile
        try:
            for count, piece in enumerate(pieces, 1):
                out.write(chunk(piece) if framed else piece)
                out.flush()
                if cut is not None and count >= cut:
                    handler.close_connection = True
                    handler.connection.shutdown(socket.SHUT_RDWR)  # lost: no end of stream
                    return
                self._hooks(request, count, piece)
            if framed:
                out.write(b"0\r\n\r\n")
            else:
                handler.connection.shutdown(socket.SHUT_WR)
            out.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _hooks(self, request: Request, count: int, piece: bytes) -> None:
        for hook in self.hooks:
            if hook.due(request.method, request.path, count, piece):
                hook.fired = True
                seen = len(self.log)
                hook.action()
                if hook.hold_until:
                    with self._arrived:
                        self._arrived.wait_for(lambda hook=hook, seen=seen: any(
                            re.search(hook.hold_until, f"{r.method} {r.path}") for r in self.log[seen:]), timeout=10)


@contextlib.contextmanager
def replaying(scenario: str, *, all_used: bool = True) -> Iterator[FakeEngine]:
    """A FakeEngine for the block, checked when the block ends without an error of its own."""
    fake = FakeEngine(scenario)
    try:
        yield fake
    finally:
        fake.close()
    fake.verify(all_used=all_used)
