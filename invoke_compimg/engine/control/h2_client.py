"""A gRPC client over one HTTP/2 connection on a byte stream: BuildKit's Control API.

Why not grpcio's channel: it dials addresses itself and cannot be handed a connection, but the
engine's Control API is reached by upgrading an HTTP/1.1 request (`POST /grpc`), over whatever
carries the engine's API (unix, tcp, TLS, ssh). With grpcio that took a unix socket of our own
and two Python threads copying every byte between it and the upgraded connection, a channel
that connects in the background, and 20 ms of import; grpcio's C core also forks badly beside
the ssh command that an ssh:// engine runs. Here the upgraded connection itself is the
channel: one reader thread feeds `h2` (already used for the session's server) and hands each
call its messages.

What a Control client needs of gRPC (grpc/doc/PROTOCOL-HTTP2.md): unary calls (Solve,
ListWorkers), a server stream (Status) and a bidirectional one (Session, with metadata);
deadlines; cancelling a call (RST_STREAM CANCEL: the daemon stops the solve); and a lost
connection failing every call with UNAVAILABLE. Messages are framed as `grpc_frames` says.
Flow control: what we send waits for the peer's window; what we receive is given back as the
consumer takes it, so a slow reader holds the daemon back rather than filling memory.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .grpc_frames import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    STATUS_NAMES,
    UNAVAILABLE,
    Deframer,
    frame,
    status_of,
    taken_in_batches,
)

RECEIVE_WINDOW = 8 << 20  # what the daemon may send before we have taken it (per call and in all)
READ_SIZE = 256 << 10
MAX_FRAME = 1 << 20  # the largest DATA frame the server may send: fewer frames for h2 (Python) to parse
OUTBOX_LIMIT = 4 << 20  # a sender waits while this much is not yet written
_END = object()


class ByteStream(Protocol):
    """A connection: `read(n)` (b"" at its end), `sendall`, `close`."""

    def read(self, size: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class RpcError(Exception):
    """A call ended with a status other than OK: `code` (grpc_frames' numbers), `name`
    (UNAVAILABLE, CANCELLED, ...), `details` (the server's words)."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"{STATUS_NAMES.get(code, code)}: {details}")
        self.code = code
        self.details = details

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.code, str(self.code))


class Call:
    """One call: `send` requests, iterate the answers (the end raises RpcError unless the
    status is OK), or `result()` a unary call's one answer; `cancel()`; `add_done_callback`."""

    def __init__(self, connection: Connection, stream_id: int,
                 on_message: Callable[[bytes], object] | None = None) -> None:
        self._connection = connection
        self.id = stream_id
        self._on_message = on_message
        self._incoming: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._deframer = Deframer()
        self._unacknowledged = 0  # received bytes whose window is not given back yet
        self._queued = 0  # bytes of messages received and not taken
        self._first: bytes | None = None  # a unary call's answer
        self._fields: dict[str, str] = {}  # headers, then trailers
        self.code: int | None = None  # set when the call is over
        self.details = ""
        self._done = threading.Event()
        self._callbacks: list[Callable[[Call], object]] = []

    # --- sending --------------------------------------------------------------------------
    def send(self, message: bytes, *, end: bool = False) -> None:
        """Send one request (waiting for the peer's window); `end`: it is the last."""
        self._connection._send(self, frame(message), end)

    def done_sending(self) -> None:
        self._connection._send(self, b"", True)

    # --- receiving ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        yield from taken_in_batches(self._incoming, lambda item: item is _END,
                                    lambda size: self._connection._taken(self, size))
        if self.code != OK:
            raise RpcError(self.code if self.code is not None else UNAVAILABLE, self.details)

    def result(self, timeout: float | None = None) -> bytes:
        """A unary call's answer; RpcError for its failure (DEADLINE_EXCEEDED after `timeout`)."""
        if not self._done.wait(timeout):
            self.cancel(DEADLINE_EXCEEDED, "no answer in time")
        if self.code != OK:
            raise RpcError(self.code if self.code is not None else UNAVAILABLE, self.details)
        if self._first is None:
            raise RpcError(INTERNAL, "the server answered no message")
        return self._first

    def done(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[[Call], object]) -> None:
        """`callback(call)` when the call is over (on the reader's thread: keep it short)."""
        with self._connection.lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self, code: int = CANCELLED, details: str = "cancelled by the client") -> None:
        """End the call now; the server is told (RST_STREAM CANCEL) and stops its work."""
        self._connection._cancel(self, code, details)

    # --- fed by the connection, under its lock ----------------------------------------------
    def _finish(self, code: int, details: str) -> None:
        if self._done.is_set():
            return
        self.code, self.details = code, details
        self._incoming.put(_END)
        self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class Connection:
    """A gRPC client on one HTTP/2 connection over `stream` (prior knowledge: the stream
    speaks HTTP/2 from its first byte, as an upgraded `/grpc` does). `ready(timeout)` waits for
    the server's settings. Thread-safe: calls may be made and used from any thread.

    h2's state is kept under `lock`; what it has to send goes to an outbox, written by one
    thread at a time outside the lock (`_write_out`), so that a link that stalls a write never
    holds up a cancel, a close, or the reader."""

    def __init__(self, stream: ByteStream, *, authority: str = "localhost", name: str = "compimg-grpc") -> None:
        self.stream = stream
        self.authority = authority
        self.lock = threading.Condition()
        self.calls: dict[int, Call] = {}
        self.broken: str | None = None  # why the connection is over
        self._settled = threading.Event()  # the server's SETTINGS came (or the connection broke)
        self._outbox = bytearray()
        self._writing = False  # a thread is writing the outbox out
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        with self.lock:
            self.conn.initiate_connection()
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
                                       h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                                       h2.settings.SettingCodes.ENABLE_PUSH: 0})
            self.conn.increment_flow_control_window(RECEIVE_WINDOW)
            self._flush()
        self._write_out()
        self.reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self.reader.start()

    def ready(self, timeout: float) -> bool:
        """Has the server answered HTTP/2 (its SETTINGS) within `timeout`?"""
        return self._settled.wait(timeout) and self.broken is None

    @property
    def alive(self) -> bool:
        return self.broken is None

    def call(self, path: str, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None,
             on_message: Callable[[bytes], object] | None = None) -> Call:
        """Start a call of method `path` (`/package.Service/Method`). `on_message(message)`:
        each answer is handed over on the reader's thread as it comes (it must not block, nor
        raise: an error ends the call), instead of waiting in the call for an iterator."""
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority),
                   ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "compimg")]
        if timeout is not None:
            headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
        headers += [(key.lower(), value) for key, value in metadata]
        with self.lock:
            if self.broken is not None:
                raise RpcError(UNAVAILABLE, self.broken)
            stream_id = self.conn.get_next_available_stream_id()
            call = Call(self, stream_id, on_message)
            self.calls[stream_id] = call
            self.conn.send_headers(stream_id, headers)
            self._flush()
        self._write_out()
        return call

    def unary(self, path: str, request: bytes, timeout: float | None = None) -> bytes:
        call = self.call(path, timeout=timeout)
        call.send(request, end=True)
        return call.result(timeout)

    def close(self) -> None:
        """End every call (UNAVAILABLE) and the connection: the stream first, so that a write
        blocked on a stalled link fails now rather than when TCP gives up."""
        with contextlib.suppress(Exception):
            self.stream.close()
        with self.lock:
            self._break("the connection was closed")
        if self.reader is not threading.current_thread():
            self.reader.join(5)

    # --- the reader thread ----------------------------------------------------------------
    def _read(self) -> None:
        reason = "the server closed the connection"
        try:
            while self.broken is None:
                data = self.stream.read(READ_SIZE)
                if not data:
                    break
                with self.lock:
                    if self.broken is not None:
                        break
                    for event in self.conn.receive_data(data):
                        self._event(event)
                    self._flush()
                    self.lock.notify_all()  # windows may have opened
                self._write_out()
        except h2.exceptions.ProtocolError as exc:
            if self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                reason = "the server is going away (GOAWAY); calls it had not finished cannot go on"
            else:
                reason = f"the server broke HTTP/2 ({type(exc).__name__}: {exc})"
        except (OSError, ValueError) as exc:  # (ValueError: a reader closed under us)
            reason = f"the connection failed ({exc or type(exc).__name__})"
        except BaseException as exc:  # a bug of ours: every call ends, none waits forever
            reason = f"the gRPC client failed ({type(exc).__name__}: {exc})"
            raise
        finally:
            with self.lock:
                self._break(reason)
            with contextlib.suppress(Exception):  # the server sees us go: it drops our calls
                self.stream.close()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self._settled.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self._break(f"the server is going away (GOAWAY {_error_name(event.error_code)}); calls it had not "
                        "finished cannot go on")
            return
        stream_id = getattr(event, "stream_id", None)
        call = self.calls.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.DataReceived):
            if call is None:  # a call we ended: its window goes back at once
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            self._data(call, event.data, event.flow_controlled_length)
        elif call is None:
            return
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            call._fields.update(dict(event.headers))  # type: ignore[arg-type]  # str: header_encoding
        elif isinstance(event, h2.events.StreamEnded):
            self.calls.pop(call.id, None)
            self._release(call)
            call._finish(*status_of(call._fields))
        elif isinstance(event, h2.events.StreamReset):
            self.calls.pop(call.id, None)
            self._release(call)
            # (as gRPC's clients take them: a stream refused may be sent again, anything else is the server's fault)
            error = event.error_code
            code = (CANCELLED if error == h2.errors.ErrorCodes.CANCEL else
                    UNAVAILABLE if error == h2.errors.ErrorCodes.REFUSED_STREAM else INTERNAL)
            call._finish(code, f"the server reset the call ({_error_name(event.error_code)})")

    def _data(self, call: Call, data: bytes, flow: int) -> None:
        call._unacknowledged += flow
        try:
            messages = call._deframer.feed(data)
        except ValueError as exc:
            self._end(call, INTERNAL, str(exc), h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        for message in messages:
            if call._on_message is not None:
                try:
                    call._on_message(message)
                except Exception as exc:
                    self._end(call, INTERNAL, f"{type(exc).__name__}: {exc}", h2.errors.ErrorCodes.CANCEL)
                    return
                continue
            if call._first is None:
                call._first = message
            call._queued += 5 + len(message)
            call._incoming.put(message)
        if call._queued <= RECEIVE_WINDOW // 2:  # at once, unless the consumer is behind
            self._acknowledge(call)

    # --- for the calls ------------------------------------------------------------------------
    def _taken(self, call: Call, size: int) -> None:
        with self.lock:
            call._queued -= size
            if call.id in self.calls and call._unacknowledged and call._queued <= RECEIVE_WINDOW // 2:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self._acknowledge(call)
                    self._flush()
        self._write_out()

    def _acknowledge(self, call: Call) -> None:
        if call._unacknowledged:
            self.conn.acknowledge_received_data(call._unacknowledged, call.id)
            call._unacknowledged = 0

    def _release(self, call: Call) -> None:
        """The call is over: the connection's window for what it had not given back yet goes
        back (h2 gives back only that part for an ended stream), or other calls would stall."""
        call._queued = 0
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._acknowledge(call)

    def _send(self, call: Call, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            with self.lock:
                if call.done():
                    if call.code == OK:
                        return  # the server answered before it took all we had: nothing more is wanted
                    raise RpcError(call.code if call.code is not None else UNAVAILABLE, call.details)
                if not view:
                    if end:
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            self.conn.end_stream(call.id)
                            self._flush()
                    break
                room = min(self.conn.local_flow_control_window(call.id), self.conn.max_outbound_frame_size,
                           len(view))
                if room <= 0 or len(self._outbox) >= OUTBOX_LIMIT:
                    self.lock.wait()  # for the peer's window, or for the outbox to go out
                    continue
                try:
                    self.conn.send_data(call.id, view[:room].tobytes())
                except h2.exceptions.StreamClosedError:
                    return  # the server ended the call first: its status says how
                view = view[room:]
                self._flush()
            self._write_out()
        self._write_out()

    def _cancel(self, call: Call, code: int, details: str) -> None:
        with self.lock:
            if call.done():
                return
            self._end(call, code, details, h2.errors.ErrorCodes.CANCEL)
        self._write_out()

    def _end(self, call: Call, code: int, details: str, error: h2.errors.ErrorCodes) -> None:
        self.calls.pop(call.id, None)
        if self.broken is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(call.id, error)
                self._release(call)
                self._flush()
        call._finish(code, details)
        self.lock.notify_all()

    # --- bytes out ------------------------------------------------------------------------------
    def _flush(self) -> None:
        """(Under the lock) what h2 has to send joins the outbox; `_write_out` sends it."""
        data = self.conn.data_to_send()
        if data and self.broken is None:
            self._outbox += data

    def _write_out(self) -> None:
        """(Not under the lock) send the outbox, unless another thread is at it: that one sends
        ours too. One writer at a time keeps the bytes in order."""
        with self.lock:
            if self._writing or not self._outbox:
                return
            self._writing = True
        try:
            while True:
                with self.lock:
                    data = bytes(self._outbox)
                    self._outbox.clear()
                    self.lock.notify_all()  # senders waiting for room in the outbox
                    if not data or self.broken is not None:
                        return
                self.stream.sendall(data)
        except (OSError, ValueError) as exc:
            with self.lock:
                self._break(f"the connection failed ({exc or type(exc).__name__})")
        finally:
            with self.lock:
                self._writing = False
                self.lock.notify_all()

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        calls, self.calls = list(self.calls.values()), {}
        for call in calls:
            call._finish(UNAVAILABLE, self.broken)
        self._outbox.clear()
        self._settled.set()
        self.lock.notify_all()


def _error_name(code: Any) -> str:
    return getattr(code, "name", str(code))
