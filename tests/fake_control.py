"""The gRPC half of the recorded engine (tests/fake_engine.py): BuildKit's Control service
behind `POST /grpc`, recorded and replayed one message at a time.

Where it taps, and why: the `POST /grpc` connection is HTTP/2 after the 101, and a Session's
bytes are a second HTTP/2 connection inside it, with the daemon as the client. Recording those
bytes would need an HTTP/2 parser (HPACK's state, flow control, frames split anywhere), and a
replay of bytes breaks on any change of frame boundaries. So both modes end the connection in
a `grpc.server` of their own (grpcio parses it, as it does for the code under test) and work
with messages:

- `ControlRecorder` (in the recording proxy) serves each upgraded connection with a relay:
  Solve, Status and ListWorkers are passed on to the engine's own Control over the engine's
  real 101 connection, and written down (the request, the answer or the gRPC error, the
  StatusResponses as raw bytes, a cancel). A Session is ended on both sides: towards the code
  we are the daemon (a gRPC client over the Session stream, `SessionLine`); towards the engine
  we are the session (`Attached`, the package's own, serving a relay), so every call the
  daemon makes on the session (FileSync, FileSend, Secrets, Auth, ...) is seen, passed on and
  written down: which dir and patterns, which paths were listed and requested, what came back.
- `FakeControl` (in the replay) serves the same calls from the recording: Solve answers the
  recorded exporter response or error, after calling the solve's session back as the daemon
  did (a health check, then each FileSync and FileSend recorded, with the same metadata,
  asking for the same paths); Status sends the recorded StatusResponses of that solve; a
  cancelled Solve is logged (`CANCEL`), and a Solve recorded as cancelled waits for it.

Tapping inside the test process (a recording `Control` wrapper) would be less code, but it
records what our code meant to send, not what went over the wire, and would need its own
way into every Engine the package makes (the Invoke glue, subprocesses); the proxy sees every
client as dockerd does.

Placeholders: a solve's `Ref`, a session's id and shared key change at every run; they are
written `{{ref:N}}`, `{{session:N}}`, `{{sharedkey:N}}` and bound in the replay as the
engine's other placeholders are (fake_engine). Statuses are kept as the daemon sent them.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

CONTROL = "/moby.buildkit.v1.Control/"
SOLVE = CONTROL + "Solve"
STATUS = CONTROL + "Status"
SESSION = CONTROL + "Session"
LIST_WORKERS = CONTROL + "ListWorkers"
FILESYNC = "/moby.filesync.v1.FileSync/DiffCopy"
FILESEND = "/moby.filesync.v1.FileSend/DiffCopy"
HEALTH = "/grpc.health.v1.Health/Check"
SESSION_KEYS = "x-docker-expose-session-"
WAIT = 10.0  # the longest a replay waits for the code's next step
CHUNK = 1 << 20
RAW_KEYS = ("blobs", "daemon", "session")  # a callback's bytes, as base64


# --- the recording ----------------------------------------------------------------------------

@dataclass
class Call:
    """One gRPC call on the Control service and what answered it."""

    grpc: str  # the method's path
    request: dict[str, Any] = field(default_factory=dict)  # the message as JSON (Session: its metadata)
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None  # {"code": "UNKNOWN", "details": "..."}
    cancelled: bool = False  # the code cancelled it before the answer
    statuses: list[str] | None = None  # Status: each StatusResponse as sent, base64
    callbacks: list[dict[str, Any]] | None = None  # Session: what the daemon asked of it, in order
    dropped: bool = False  # Session: never passed on to the engine (a lost session, on purpose)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False, {}) or k == "grpc"}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Call:
        return Call(**data)

    @property
    def title(self) -> str:
        name = self.grpc.rsplit("/", 1)[-1]
        if self.grpc == SOLVE:
            attrs = self.request.get("FrontendAttrs", {})
            return f"gRPC Solve (target {attrs.get('target', '-')}, exporter {self.request.get('Exporter', '-')})"
        if self.grpc == SESSION:
            return f"gRPC Session {session_id(self.request.get('metadata', {}))}"
        return f"gRPC {name} {self.request.get('Ref', '')}".rstrip()


def session_id(metadata: dict[str, list[str]]) -> str:
    return (metadata.get(SESSION_KEYS + "uuid") or [""])[0]


def scrub_call(call: Call, scrubber: Any) -> Call:
    """Placeholders for what changes at every run: by field first (refs, session ids, shared
    keys), then the recording's usual text scrubbing (project names, hosts, temp names)."""
    request = call.request
    if call.grpc in (SOLVE, STATUS) and request.get("Ref"):
        request["Ref"] = scrubber.numbered("ref", request["Ref"])
    if call.grpc == SOLVE and request.get("Session"):
        request["Session"] = scrubber.numbered("session", request["Session"])
    if call.grpc == SESSION:
        meta = request.get("metadata", {})
        for key, kind in (("uuid", "session"), ("sharedkey", "sharedkey")):
            meta[SESSION_KEYS + key] = [scrubber.numbered(kind, v) for v in meta.get(SESSION_KEYS + key, [])]

    def deep(value: Any) -> Any:
        if isinstance(value, str):
            return scrubber.text(value)
        if isinstance(value, list):
            return [deep(v) for v in value]
        if isinstance(value, dict):  # bytes as base64 are kept as they are
            return {scrubber.text(k): v if k in RAW_KEYS else deep(v) for k, v in value.items()}
        return value

    call.request = deep(call.request)
    call.response = deep(call.response)
    call.error = deep(call.error)
    call.callbacks = deep(call.callbacks)
    return call


def message_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def flat(value: Any, prefix: str = "") -> dict[str, str]:
    """A JSON value as `a.b.0` -> text pairs (what a replay compares)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for index, item in enumerate(value) for k, v in flat(item, f"{prefix}{index}.").items()}
    return {prefix[:-1]: str(value)}


def _metadata(context: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str) and not key.startswith((":", "grpc-")) and key not in ("user-agent", "te",
                                                                                           "content-type"):
            found.setdefault(key, []).append(value)
    return found


def _pairs(metadata: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(key, value) for key, values in metadata.items() for value in values]


def _error(exc: Any) -> dict[str, str]:
    """A failed call as recorded: grpcio's RpcError, or our client's (`h2_client.RpcError`)."""
    if callable(getattr(exc, "code", None)):
        return {"code": exc.code().name, "details": exc.details() or ""}
    return {"code": exc.name, "details": exc.details}


def _grpc_code(exc: Any) -> Any:
    """Our client's status as grpcio's StatusCode (to end a relayed call with it)."""
    import grpc

    return next(code for code in grpc.StatusCode if code.value[0] == exc.code)


def _texts(files: dict[str, bytes]) -> tuple[dict[str, str], dict[str, str]]:
    """Files as (text ones, base64 ones)."""
    texts: dict[str, str] = {}
    blobs: dict[str, str] = {}
    for path, data in files.items():
        try:
            texts[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            blobs[path] = base64.b64encode(data).decode()
    return texts, blobs


# --- plumbing: sockets, pipes, the daemon's end of a session ----------------------------------------

def _pipe(read: Callable[[int], bytes], write: Callable[[bytes], None], done: Callable[[], None]) -> None:
    try:
        while data := read(256 * 1024):
            write(data)
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            done()


def splice(read: Callable[[int], bytes], conn: socket.socket, other: socket.socket) -> None:
    """Bytes both ways between a connection (`read` from it, possibly through a buffer that
    already holds some; `conn` to write) and the socket `other`, until both ends are done."""
    forth = threading.Thread(target=_pipe, args=(read, other.sendall, lambda: other.shutdown(socket.SHUT_WR)),
                             daemon=True, name="fake-grpc-pipe")
    forth.start()
    _pipe(other.recv, conn.sendall, lambda: conn.shutdown(socket.SHUT_WR))
    forth.join(WAIT)


class Folder:
    """A private folder for unix sockets, with fresh names."""

    def __init__(self, prefix: str) -> None:
        self.path = tempfile.mkdtemp(prefix=prefix)
        self._names = itertools.count(1)

    def socket_path(self, kind: str) -> str:
        return os.path.join(self.path, f"{kind}-{next(self._names)}.sock")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    return listener


def grpc_server(handler: Any, address: str) -> Any:
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=48, thread_name_prefix="fake-grpc"), handlers=[handler],
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    if not server.add_insecure_port(f"unix:{address}"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server


def generic(methods: dict[str, Any], other: Callable[[str], Any] | None = None) -> Any:
    """A grpc handler: `methods` by path, and `other(path)` for any other method (None:
    UNIMPLEMENTED)."""
    import grpc

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            found = methods.get(details.method)
            return found if found is not None or other is None else other(details.method)

    return Handler()


def _when_ended(context: Any, close: Callable[[], None]) -> None:
    """Run `close` when the gRPC call ends; at once if it has ended already (cancelled before its
    handler ran: grpc then never calls back, and a handler waiting for it would wait for ever)."""
    if not context.add_callback(close):
        close()


class SessionLine:
    """The daemon's end of one Control.Session stream: a gRPC channel to the code's session
    server whose bytes are the stream's messages (what the code's server writes comes in,
    what the channel writes goes out), through a unix socket of ours."""

    def __init__(self, folder: Folder, incoming: Iterable[bytes]) -> None:
        import grpc

        path = folder.socket_path("line")
        self.listener = listen(path)
        self.channel = grpc.insecure_channel(f"unix:{path}")
        self.conn: socket.socket | None = None
        self.accepted = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="fake-session-accept").start()
        threading.Thread(target=self._feed, args=(incoming,), daemon=True, name="fake-session-feed").start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            self.conn, _ = self.listener.accept()
        self.accepted.set()

    def _feed(self, incoming: Iterable[bytes]) -> None:
        try:
            for data in incoming:
                while not self.accepted.wait(0.1):  # the channel connects on its first call
                    if self.closed.is_set():
                        return
                if self.conn is None:
                    return
                self.conn.sendall(data)
        except Exception:  # the stream ended or was cancelled
            pass
        finally:
            if self.conn is not None:
                with contextlib.suppress(OSError):
                    self.conn.shutdown(socket.SHUT_WR)

    def outgoing(self, active: Callable[[], bool] = lambda: True) -> Iterator[bytes]:
        """What the session server sends, until the line closes; while nothing has connected,
        also until the call is no longer `active` (a call cancelled at once, its solve failed
        before the daemon asked anything: grpc may never call the handler's callback then)."""
        while not self.accepted.wait(0.1):
            if self.closed.is_set() or not active():
                return
        while self.conn is not None and not self.closed.is_set():
            try:
                data = self.conn.recv(256 * 1024)
            except OSError:
                return
            if not data:
                return
            yield data

    def close(self) -> None:
        self.closed.set()
        self.channel.close()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()
        self.accepted.set()


def _wrap(data: bytes) -> bytes:
    from invoke_compimg.engine.control.proto import control_pb2

    return control_pb2.BytesMessage(data=data).SerializeToString()


def _unwrap(message: bytes) -> bytes:
    from invoke_compimg.engine.control.proto import control_pb2

    return control_pb2.BytesMessage.FromString(message).data


def _control_methods(served: Any) -> dict[str, Any]:
    """The Control methods a fake serves (recording or replaying), by path: its `_solve`,
    `_status`, `_list_workers` and `_session`."""
    import grpc

    from invoke_compimg.engine.control.proto import control_pb2

    return {
        SOLVE: grpc.unary_unary_rpc_method_handler(
            served._solve, request_deserializer=control_pb2.SolveRequest.FromString,
            response_serializer=control_pb2.SolveResponse.SerializeToString),
        STATUS: grpc.unary_stream_rpc_method_handler(
            served._status, request_deserializer=control_pb2.StatusRequest.FromString),
        LIST_WORKERS: grpc.unary_unary_rpc_method_handler(
            served._list_workers, request_deserializer=control_pb2.ListWorkersRequest.FromString,
            response_serializer=control_pb2.ListWorkersResponse.SerializeToString),
        SESSION: _session_handler(served._session),
    }


def _session_handler(open_line: Callable[[Iterable[bytes], Any], Iterator[bytes]]) -> Any:
    """Control.Session as a handler: `open_line(incoming bytes, context)` yields the bytes to send."""
    import grpc

    def handle(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        yield from open_line(requests, context)

    return grpc.stream_stream_rpc_method_handler(handle, request_deserializer=_unwrap, response_serializer=_wrap)


# --- recording -------------------------------------------------------------------------------

class ControlRecorder:
    """One upgraded `POST /grpc` connection through the recording proxy, served by a relay to
    the engine's own Control (over the engine's 101 connection), which writes every call down
    in `proxy` (`add`, `busy`, `fire`, `take_drop`)."""

    def __init__(self, proxy: Any, engine_read: Callable[[int], bytes], engine: socket.socket) -> None:
        from invoke_compimg.engine.control.h2_client import Connection

        self.proxy = proxy
        self.folder = Folder("compimg-rec-grpc-")

        class EngineStream:  # the engine's 101 connection, read through the buffer that may hold its first bytes
            read = staticmethod(engine_read)
            sendall = staticmethod(engine.sendall)

            @staticmethod
            def close() -> None:
                with contextlib.suppress(OSError):
                    engine.shutdown(socket.SHUT_RDWR)

        # Upstream through the code's own client: what the engine answers is written down as it came.
        self.upstream = Connection(EngineStream(), name="fake-grpc-upstream")
        methods = _control_methods(self)
        self.address = self.folder.socket_path("relay")
        self.server = grpc_server(generic(methods, self._unknown), self.address)

    def serve(self, read: Callable[[int], bytes], conn: socket.socket) -> None:
        """Relay the code's upgraded connection until it ends."""
        relay = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        relay.connect(self.address)
        try:
            splice(read, conn, relay)
        finally:
            relay.close()
            self.close()

    def close(self) -> None:
        self.server.stop(grace=1).wait(5)
        self.upstream.close()
        self.folder.remove()

    def _unknown(self, method: str) -> None:
        self.proxy.add(Call(method, error={"code": "UNIMPLEMENTED", "details": "not relayed by the recorder"}))

    def _solve(self, request: Any, context: Any) -> Any:
        from invoke_compimg.engine.control.h2_client import RpcError
        from invoke_compimg.engine.control.proto import control_pb2

        call = self.proxy.add(Call(SOLVE, message_dict(request)))
        with self.proxy.busy():
            upstream = self.upstream.call(SOLVE)
            upstream.send(request.SerializeToString(), end=True)
            context.add_callback(upstream.cancel)
            try:
                answer = control_pb2.SolveResponse.FromString(upstream.result())
            except RpcError as exc:
                if not context.is_active():
                    call.cancelled = True
                    return control_pb2.SolveResponse()  # to no one: the code is gone
                call.error = _error(exc)
                context.abort(_grpc_code(exc), exc.details)
            call.response = message_dict(answer)
            return answer

    def _status(self, request: Any, context: Any) -> Iterator[bytes]:
        from invoke_compimg.engine.control.h2_client import RpcError

        call = self.proxy.add(Call(STATUS, message_dict(request), statuses=[]))
        with self.proxy.busy():
            stream = self.upstream.call(STATUS)
            stream.send(request.SerializeToString(), end=True)
            context.add_callback(stream.cancel)
            try:
                for count, payload in enumerate(stream, 1):
                    call.statuses.append(base64.b64encode(payload).decode())  # type: ignore[union-attr]
                    yield payload
                    self.proxy.fire("GRPC", STATUS, count, payload)
            except RpcError as exc:
                if exc.name != "CANCELLED":
                    call.error = _error(exc)

    def _list_workers(self, request: Any, context: Any) -> Any:
        from invoke_compimg.engine.control.h2_client import RpcError
        from invoke_compimg.engine.control.proto import control_pb2

        call = self.proxy.add(Call(LIST_WORKERS, message_dict(request)))
        try:
            answer = control_pb2.ListWorkersResponse.FromString(
                self.upstream.unary(LIST_WORKERS, request.SerializeToString(), timeout=30))
        except RpcError as exc:
            call.error = _error(exc)
            context.abort(_grpc_code(exc), exc.details)
        call.response = message_dict(answer)
        return answer

    def _session(self, incoming: Iterable[bytes], context: Any) -> Iterator[bytes]:
        from invoke_compimg.engine.control.session import Attached

        metadata = {k: v for k, v in _metadata(context).items() if k.startswith(SESSION_KEYS)}
        call = self.proxy.add(Call(SESSION, {"metadata": metadata}, callbacks=[]))
        line = SessionLine(self.folder, incoming)
        attached = None
        if self.proxy.take_drop():
            call.dropped = True  # the engine never hears of it: its solve finds no session
        else:
            attached = Attached(_RelayedSession(metadata, line, call), self.upstream)

        def close() -> None:
            if attached is not None:
                attached.close()
            line.close()

        _when_ended(context, close)
        with self.proxy.busy():
            yield from line.outgoing(context.is_active)


class _RelayedSession:
    """What `session.Attached` serves towards the engine: every method the code's session
    announced, passed on to it through `line` and written down in `call.callbacks`."""

    def __init__(self, metadata: dict[str, list[str]], line: SessionLine, call: Call) -> None:
        self.id = session_id(metadata)
        self._metadata = metadata
        self.line = line
        self.call = call

    def metadata(self) -> list[tuple[str, str]]:
        return _pairs(self._metadata)

    def handler(self) -> Any:
        import grpc

        from invoke_compimg.engine.control.h2_server import Method

        def relay(method: str) -> Any:
            def handle(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
                sent: list[bytes] = []
                answered: list[bytes] = []
                metadata = _metadata(context)

                def passed_on() -> Iterator[bytes]:
                    for message in requests:
                        sent.append(message)
                        yield message

                forward = self.line.channel.stream_stream(method)(passed_on(), metadata=_pairs(metadata))
                error = None
                try:
                    for message in forward:
                        answered.append(message)
                        yield message
                except grpc.RpcError as exc:
                    error = _error(exc)
                    context.abort(exc.code(), exc.details() or "")
                finally:
                    forward.cancel()
                    if method != HEALTH:  # asked every second: when is not the daemon's answer to us
                        self.call.callbacks.append(  # type: ignore[union-attr]
                            callback_record(method, metadata, sent, answered, error))

            return Method(handle, streaming=True)

        return relay


def callback_record(method: str, metadata: dict[str, list[str]], daemon: list[bytes], session: list[bytes],
                    error: dict[str, str] | None) -> dict[str, Any]:
    """What one call of the daemon on a session did, as the replay needs it."""
    from invoke_compimg.engine.control.proto import fsutil_pb2

    Packet = fsutil_pb2.Packet
    found: dict[str, Any] = {"method": method, "metadata": metadata}
    if error is not None:
        found["error"] = error
    try:
        if method == FILESYNC:  # the session lists and sends, the daemon asks
            listed = [Packet.FromString(m) for m in session]
            stats = [p.stat for p in listed if p.type == Packet.PACKET_STAT and p.HasField("stat")]
            asked = [p.ID for p in map(Packet.FromString, daemon) if p.type == Packet.PACKET_REQ]
            files = _files(listed, stats)
            found["stats"] = [{"path": s.path, "mode": s.mode} for s in stats]
            found["requested"] = [stats[i].path for i in asked]
            found["files"], found["blobs"] = _texts(files)
            return found
        if method == FILESEND:  # the daemon lists and sends, the session asks
            listed = [Packet.FromString(m) for m in daemon]
            stats = [p.stat for p in listed if p.type == Packet.PACKET_STAT and p.HasField("stat")]
            found["stats"] = [message_dict(s) for s in stats]
            found["requested"] = [stats[p.ID].path for p in map(Packet.FromString, session)
                                  if p.type == Packet.PACKET_REQ]
            found["files"], found["blobs"] = _texts(_files(listed, stats))
            return found
    except Exception:  # not fsutil packets (a tar export's bytes): kept as they are
        pass
    found["daemon"] = [base64.b64encode(m).decode() for m in daemon]
    found["session"] = [base64.b64encode(m).decode() for m in session]
    return found


def _files(packets: list[Any], stats: list[Any]) -> dict[str, bytes]:
    from invoke_compimg.engine.control.proto import fsutil_pb2

    data: dict[str, bytes] = {}
    for packet in packets:
        if packet.type == fsutil_pb2.Packet.PACKET_DATA and len(stats) > packet.ID:
            path = stats[packet.ID].path
            data[path] = data.get(path, b"") + packet.data
    return data


# --- replaying -------------------------------------------------------------------------------

@dataclass
class _Solving:
    """A Solve the replay matched: what was recorded, whether the daemon's calls on its
    session are over (its statuses follow them), and whether its statuses went out."""

    recorded: Call | None  # None: the recording has no such Solve (a problem already)
    called_back: threading.Event = field(default_factory=threading.Event)
    status_over: threading.Event = field(default_factory=threading.Event)


class FakeControl:
    """The Control service of a FakeEngine, served from its recorded calls (`owner.calls`).
    Every `POST /grpc` the fake answers 101 is piped into one `grpc.server` of this."""

    def __init__(self, owner: Any) -> None:


        self.owner = owner
        self.folder = Folder("compimg-fake-grpc-")
        self.lock = threading.Condition()
        self.solves: dict[str, _Solving] = {}  # actual ref -> its solve
        self.sessions: dict[str, SessionLine] = {}  # actual session id -> the line to it
        self.session_meta: dict[str, dict[str, list[str]]] = {}  # actual session id -> its metadata
        self.connections: list[socket.socket] = []
        methods = _control_methods(self)
        self.address = self.folder.socket_path("control")
        self.server = grpc_server(generic(methods, self._unknown), self.address)

    # --- the connections ---------------------------------------------------------------------
    def serve(self, read: Callable[[int], bytes], conn: socket.socket) -> None:
        """Pipe one upgraded connection into the server until either side ends it."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.connect(self.address)
        with self.lock:
            self.connections.append(conn)
        try:
            splice(read, conn, server)
        finally:
            server.close()
            with self.lock:
                if conn in self.connections:
                    self.connections.remove(conn)

    def lose(self) -> None:
        """The engine is lost: every upgraded connection breaks off."""
        with self.lock:
            connections, self.connections = list(self.connections), []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.lose()
        with self.lock:
            lines = list(self.sessions.values())
        for line in lines:
            line.close()
        self.server.stop(grace=None).wait(5)
        self.folder.remove()

    # --- what the owner keeps -------------------------------------------------------------------
    def _log(self, method: str, path: str, sent: dict[str, Any]) -> Any:
        from fake_engine import Request

        request = Request(method, path, {}, sent)
        self.owner.record(request)
        return request

    def _problem(self, text: str) -> None:
        self.owner.problem(text)

    def _claim(self, method: str, fits: Callable[[Call], dict[str, str] | None]) -> Call | None:
        """The first unused recorded call of `method` that `fits` (its bindings are kept)."""
        with self.owner.lock:
            for index, candidate in enumerate(self.owner.calls):
                if self.owner.calls_used[index] or candidate.grpc != method:
                    continue
                bindings = fits(candidate)
                if bindings is not None:
                    self.owner.calls_used[index] = True
                    self.owner.bound.update(bindings)
                    return candidate
        return None

    def _fits(self, template: dict[str, Any], actual: dict[str, Any]) -> dict[str, str] | None:
        wanted, given = flat(template), flat(actual)
        if sorted(wanted) != sorted(given):
            return None
        bindings: dict[str, str] = {}
        for key in sorted(wanted):
            found = self.owner._fit(wanted[key], given[key], bindings)
            if found is None:
                return None
            bindings = found
        return bindings

    def _unknown(self, method: str) -> None:
        self._log("GRPC", method, {})
        self._problem(f"unexpected gRPC call {method}")

    # --- Control -------------------------------------------------------------------------------
    def _list_workers(self, request: Any, context: Any) -> Any:
        import grpc
        from google.protobuf import json_format

        from invoke_compimg.engine.control.proto import control_pb2

        sent = message_dict(request)
        self._log("GRPC", LIST_WORKERS, {"json": sent})
        recorded = self._claim(LIST_WORKERS, lambda call: self._fits(call.request, sent))
        if recorded is None:
            self._problem(f"unexpected gRPC call ListWorkers {sent}")
            context.abort(grpc.StatusCode.UNKNOWN, f"fake engine: the recording {self.owner.scenario} has no "
                          "ListWorkers")
        assert recorded is not None
        if recorded.error:
            context.abort(grpc.StatusCode[recorded.error["code"]], recorded.error["details"])
        return json_format.ParseDict(recorded.response or {}, control_pb2.ListWorkersResponse())

    def _solve(self, request: Any, context: Any) -> Any:
        import grpc

        from invoke_compimg.engine.control.proto import control_pb2

        sent = message_dict(request)
        self._log("GRPC", SOLVE, {"json": sent})
        answered = threading.Event()

        def ended() -> None:
            if not answered.is_set():
                self._log("CANCEL", SOLVE, {"json": {"Ref": request.Ref}})

        context.add_callback(ended)
        recorded = self._claim(SOLVE, lambda call: self._fits(call.request, sent))
        solving = _Solving(recorded)
        with self.lock:
            self.solves[request.Ref] = solving
            self.lock.notify_all()
        if recorded is None:
            self._problem(f"unexpected gRPC call Solve {sent}")
            answered.set()
            solving.called_back.set()
            context.abort(grpc.StatusCode.UNKNOWN, f"fake engine: the recording {self.owner.scenario} has no such "
                          "Solve")
        assert recorded is not None
        try:
            if request.Session:
                self._call_back(request.Session, recorded, context)
        finally:
            solving.called_back.set()
        if self._recorded_status(recorded) is not None:
            solving.status_over.wait(WAIT)
        if recorded.cancelled:
            for _ in range(int(WAIT / 0.05)):
                if not context.is_active():
                    return control_pb2.SolveResponse()  # to no one: the code cancelled it
                threading.Event().wait(0.05)
            self._problem(f"the Solve of ref {request.Ref} was recorded cancelled, and the code did not cancel it")
            answered.set()
            context.abort(grpc.StatusCode.CANCELLED, "context canceled")
        answered.set()
        if recorded.error:
            context.abort(grpc.StatusCode[recorded.error["code"]], self.owner.fill(recorded.error["details"]))
        response = {k: self.owner.fill(v) for k, v in ((recorded.response or {}).get("ExporterResponse") or {}).items()}
        return control_pb2.SolveResponse(ExporterResponse=response)

    def _recorded_status(self, solve: Call) -> Call | None:
        return next((c for c in self.owner.calls if c.grpc == STATUS and c.request.get("Ref") == solve.request["Ref"]),
                    None)

    def _status(self, request: Any, context: Any) -> Iterator[bytes]:
        sent = message_dict(request)
        logged = self._log("GRPC", STATUS, {"json": sent})
        with self.lock:
            if not self.lock.wait_for(lambda: request.Ref in self.solves, timeout=WAIT):
                self._problem(f"Status for ref {request.Ref}, which no Solve named")
                return
            solving = self.solves[request.Ref]
        wanted = solving.recorded.request["Ref"] if solving.recorded is not None else None
        recorded = self._claim(STATUS, lambda call: {} if call.request.get("Ref") == wanted else None)
        try:
            solving.called_back.wait(WAIT)  # the daemon reads its files before it runs the steps
            if recorded is None:
                return
            cut = self.owner.take_cut("GRPC", STATUS)
            for count, text in enumerate(recorded.statuses or [], 1):
                if not context.is_active():
                    return
                payload = base64.b64decode(text)
                yield payload
                if cut is not None and count >= cut:
                    self.lose()
                    return
                self.owner.run_hooks(logged, count, payload)
        finally:
            solving.status_over.set()

    def _session(self, incoming: Iterable[bytes], context: Any) -> Iterator[bytes]:
        metadata = {k: v for k, v in _metadata(context).items() if k.startswith(SESSION_KEYS)}
        self._log("GRPC", SESSION, {"metadata": metadata})
        line = SessionLine(self.folder, incoming)
        actual = session_id(metadata)
        with self.lock:
            self.sessions[actual] = line
            self.session_meta[actual] = metadata
            self.lock.notify_all()

        def close() -> None:
            with self.lock:
                if self.sessions.get(actual) is line:
                    del self.sessions[actual]
            line.close()

        _when_ended(context, close)
        yield from line.outgoing(context.is_active)

    # --- the daemon calling a session back -------------------------------------------------------
    def _call_back(self, actual: str, solve: Call, context: Any) -> None:
        """Do on the code's session what the daemon did during the recorded solve."""
        placeholder = solve.request.get("Session", "")
        with self.lock:
            if not self.lock.wait_for(lambda: actual in self.sessions, timeout=WAIT):
                self._problem(f"Solve names session {actual}, which was never attached")
                return
            line = self.sessions[actual]
        live = self.session_meta[actual]
        recorded = self._claim(SESSION, lambda call: self._fits(call.request.get("metadata", {}), live)
                               if session_id(call.request.get("metadata", {})) == placeholder else None)
        if recorded is None:
            self._problem(f"no recorded Session {placeholder} for the session the Solve names")
            return
        if recorded.dropped:
            return
        from fake_daemon import DaemonCalls

        daemon = DaemonCalls(line.channel, self.owner.fill, self.owner.fit_text)
        self._log("CALLBACK", HEALTH, {"answer": daemon.health()})
        for callback in recorded.callbacks or []:
            if not context.is_active():
                return
            outcome = daemon.replay(callback)
            self._log("CALLBACK", callback["method"], outcome)
            for problem in outcome.get("problems", []):
                self._problem(f"{callback['method']} ({callback['metadata'].get('dir-name', [''])[0]}): {problem}")
