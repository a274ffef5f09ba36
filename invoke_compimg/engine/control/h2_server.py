"""A gRPC server over one HTTP/2 connection that arrives as bytes: a BuildKit session.

The daemon is the HTTP/2 client of a session and its bytes reach us inside another stream
(`Control.Session`'s BytesMessages), so there is no socket to hand a server. `grpc.server`
needed one: a unix socket and a pipe, and it sends every gRPC message as its own write,
waiting for each before the next. FileSync lists a context one message per entry, so a tree of
2,000 files cost 0.5-0.66 s in that server alone (the CLI's Go takes 0.1 s). Here the
messages a handler yields are appended to its stream's buffer, and one writer thread sends
whatever has gathered, as large DATA frames as flow control allows: thousands of small
messages leave in a few writes. `h2` (pure Python) keeps the HTTP/2 state: HPACK, flow
control, settings, pings.

gRPC over HTTP/2, as far as a session needs it (grpc/doc/PROTOCOL-HTTP2.md): a call is one
stream; the request's `:path` names the method and its other headers are the metadata; the
messages are framed as `grpc_frames` says; the answer is headers (`:status 200`,
`content-type application/grpc`), messages, then trailers with `grpc-status` (and
`grpc-message`).

Threads: the caller feeds received bytes through `receive` (one thread); each call runs its
handler on a thread of its own; one writer thread owns every send. `send` (given) takes the
bytes to write and must not block for long: `Attached` queues them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ...records import record
from .grpc_frames import (
    FAILED_PRECONDITION,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    OK,
    PERMISSION_DENIED,
    UNIMPLEMENTED,
    Deframer,
    frame,
    quote,
    taken_in_batches,
)

log = logging.getLogger(__name__)

__all__ = ["FAILED_PRECONDITION", "INTERNAL", "INVALID_ARGUMENT", "NOT_FOUND", "OK", "PERMISSION_DENIED",
           "UNIMPLEMENTED", "Aborted", "Call", "Method", "Server"]

RECEIVE_WINDOW = 8 << 20  # what the daemon may send before we have taken it (per stream and in all)
OUT_BUFFER = 4 << 20  # a handler waits while its stream has this much unsent (a file is not read whole)
WRITE_ROUND = 1 << 20  # the most one stream sends before the writer hands its bytes on


def _identity(message: Any) -> Any:
    return message


@record
class Method:
    """One method served: `handle(request, call)` for a unary method, `handle(requests, call)`
    (an iterator) yielding the answers for a streaming one; messages decoded and encoded by
    `decode`/`encode` (raw bytes by default)."""

    handle: Callable[..., Any]
    streaming: bool
    decode: Callable[[bytes], Any] = _identity
    encode: Callable[[Any], bytes] = _identity


class Aborted(Exception):
    """Raised by `Call.abort`: the call ends with this status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Gone(Exception):
    """The stream was reset, or the connection closed: nothing more can be sent on it."""


_END = object()  # the peer ended its requests: a normal end
_GONE = object()  # the stream was reset or the connection closed: reading raises _Gone


class Call:
    """What a handler is given about its call (the `grpc.ServicerContext` calls a session uses)."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self._stream.metadata)

    def abort(self, code: Any, details: str) -> None:
        """End the call with `code` (an int, or a `grpc.StatusCode`) and `details`."""
        number = code.value[0] if hasattr(code, "value") else int(code)
        raise Aborted(number, details)


class _Stream:
    def __init__(self, stream_id: int, path: str, metadata: list[tuple[str, str]]) -> None:
        self.id = stream_id
        self.path = path
        self.metadata = metadata
        self.incoming: queue.Queue[Any] = queue.Queue()
        self.deframer = Deframer()  # received bytes of a message not yet whole
        self.unacknowledged = 0  # received bytes whose window is not given back yet
        self.queued = 0  # bytes of whole messages the handler has not taken
        self.out = bytearray()  # framed messages not yet sent
        self.headers_sent = False
        self.trailers: list[tuple[str, str]] | None = None  # set when the handler is done
        self.gone = False

    def messages(self, server: Server) -> Iterator[bytes]:
        """The requests; raises _Gone if the call is cut off rather than ended (a tar export
        must not take a cut-off stream for a whole one)."""
        yield from taken_in_batches(self.incoming, lambda item: item is _END or item is _GONE,
                                    lambda size: server._taken(self, size))
        if self.incoming.get() is _GONE:  # (the end stays in the queue: a second look sees it too)
            self.incoming.put(_GONE)
            raise _Gone()
        self.incoming.put(_END)


class Server:
    """Serves `lookup(path)`'s methods on one HTTP/2 connection whose bytes arrive through
    `receive` and leave through `send`. `close()` ends every call."""

    def __init__(self, lookup: Callable[[str], Method | None], send: Callable[[bytes], None],
                 name: str = "compimg-h2") -> None:
        self.lookup = lookup
        self._send = send
        self.name = name
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.lock = threading.Condition()
        self.streams: dict[int, _Stream] = {}
        self.handlers: list[threading.Thread] = []
        self.closed = False
        with self.lock:
            self.conn.initiate_connection()
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW})
            self.conn.increment_flow_control_window(RECEIVE_WINDOW)
            self._flush()
        self.writer = threading.Thread(target=self._write, name=f"{name}-writer", daemon=True)
        self.writer.start()

    # --- bytes in ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the peer. Raises h2's ProtocolError on a broken connection."""
        with self.lock:
            if self.closed:
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self._flush()  # the GOAWAY h2 wrote
                self._close_all()
                raise
            for event in events:
                self._event(event)
            self._flush()
            self.lock.notify_all()  # windows may have opened

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start(event.stream_id, event.headers)  # type: ignore[arg-type]  # str: header_encoding
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            self._data(stream, event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.incoming.put(_END)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._gone(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close_all()

    def _start(self, stream_id: int, headers: list[tuple[str, str]]) -> None:
        fields = dict(headers)
        path = fields.get(":path", "")
        metadata = [(k.lower(), v) for k, v in headers  # the call's metadata: what gRPC's own headers are not
                    if not k.startswith((":", "grpc-")) and k.lower() not in ("te", "content-type")]
        stream = _Stream(stream_id, path, metadata)
        self.streams[stream_id] = stream
        method = self.lookup(path)
        if method is None:
            stream.trailers = [("grpc-status", str(UNIMPLEMENTED)), ("grpc-message", quote(f"unknown method {path}"))]
            stream.incoming.put(_END)
            self.lock.notify_all()
            return
        handler = threading.Thread(target=self._serve, args=(stream, method), name=f"{self.name}-{stream_id}",
                                   daemon=True)
        self.handlers = [t for t in self.handlers if t.is_alive()] + [handler]
        handler.start()

    def _data(self, stream: _Stream, data: bytes, flow: int) -> None:
        stream.unacknowledged += flow
        try:
            messages = stream.deframer.feed(data)
        except ValueError:
            self.conn.reset_stream(stream.id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.streams.pop(stream.id, None)
            self._gone(stream)
            return
        for message in messages:
            stream.queued += 5 + len(message)
            stream.incoming.put(message)
        # Give the window back at once unless the handler is behind: then when it takes them.
        if stream.queued <= RECEIVE_WINDOW // 2:
            self._acknowledge(stream)

    def _taken(self, stream: _Stream, size: int) -> None:
        with self.lock:
            if stream.gone:  # its window was given back when it went
                return
            stream.queued -= size
            if stream.unacknowledged and stream.queued <= RECEIVE_WINDOW // 2:
                self._acknowledge(stream)
                self._flush()

    def _acknowledge(self, stream: _Stream) -> None:
        if stream.unacknowledged:
            # (h2 gives back only the connection's window of a stream that has ended)
            self.conn.acknowledge_received_data(stream.unacknowledged, stream.id)
            stream.unacknowledged = 0

    # --- the calls ----------------------------------------------------------------------

    def _serve(self, stream: _Stream, method: Method) -> None:
        call = Call(stream)
        status, details = OK, ""
        try:
            if method.streaming:
                decoded = (method.decode(m) for m in stream.messages(self))
                for answer in method.handle(decoded, call):
                    self._write_message(stream, method.encode(answer))
            else:
                request = next(stream.messages(self), None)
                if request is None:
                    raise Aborted(INTERNAL, "the call sent no request")
                self._write_message(stream, method.encode(method.handle(method.decode(request), call)))
        except Aborted as exc:
            status, details = exc.code, exc.details
        except _Gone:
            return
        except Exception as exc:  # a handler's bug: the call fails, the session goes on
            log.debug("session call %s failed", stream.path, exc_info=True)
            status, details = INTERNAL, f"{type(exc).__name__}: {exc}"
        with self.lock:
            if stream.gone:
                return
            stream.trailers = [("grpc-status", str(status))]
            if details:
                stream.trailers.append(("grpc-message", quote(details)))
            self.lock.notify_all()

    def _write_message(self, stream: _Stream, message: bytes) -> None:
        with self.lock:
            while len(stream.out) >= OUT_BUFFER and not stream.gone:
                self.lock.wait()
            if stream.gone:
                raise _Gone()
            idle = not stream.out
            stream.out += frame(message)
            if idle:
                # The writer waits only when nothing it holds can go out; a buffer that was
                # not empty is already in its hands (one wake-up per message cost 8 us each)
                self.lock.notify_all()

    # --- bytes out: one writer ----------------------------------------------------------

    def _write(self) -> None:
        with self.lock:
            while not self.closed:
                try:
                    if not self._send_round():
                        self.lock.wait()
                except h2.exceptions.ProtocolError:  # the connection broke under us: every call ends
                    log.debug("session connection ended", exc_info=True)
                    self._close_all()

    def _send_round(self) -> bool:
        """Send what can be sent now; False when nothing could."""
        sent = False
        for stream in list(self.streams.values()):
            try:
                sent |= self._send_stream(stream)
            except h2.exceptions.StreamClosedError:
                self.streams.pop(stream.id, None)
                self._gone(stream)
        if sent:
            self._flush()
            self.lock.notify_all()  # handlers waiting for room in their buffers
        return sent

    def _send_stream(self, stream: _Stream) -> bool:
        sent = False
        if not stream.headers_sent and (stream.out or stream.trailers is not None):
            headers = [(":status", "200"), ("content-type", "application/grpc")]
            if not stream.out and stream.trailers is not None:  # trailers only: one HEADERS
                self.conn.send_headers(stream.id, headers + stream.trailers, end_stream=True)
                self._finished(stream)
                return True
            self.conn.send_headers(stream.id, headers)
            stream.headers_sent = sent = True
        budget = WRITE_ROUND
        while stream.out and budget > 0:
            room = min(self.conn.local_flow_control_window(stream.id), self.conn.max_outbound_frame_size,
                       len(stream.out), budget)
            if room <= 0:
                break
            self.conn.send_data(stream.id, bytes(stream.out[:room]))
            del stream.out[:room]
            budget -= room
            sent = True
        if not stream.out and stream.trailers is not None:
            self.conn.send_headers(stream.id, stream.trailers, end_stream=True)
            self._finished(stream)
            sent = True
        return sent

    def _finished(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self._release(stream)  # nothing more is written; a handler still reading sees the end
        stream.incoming.put(_END)

    def _release(self, stream: _Stream) -> None:
        """The stream is over: the connection's window for what it had not given back yet goes
        back (h2 gives back only that part for an ended stream), or other calls would stall."""
        stream.gone = True
        stream.queued = 0
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection itself is gone
            self._acknowledge(stream)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._send(data)

    # --- ending -------------------------------------------------------------------------

    def _gone(self, stream: _Stream) -> None:
        self._release(stream)
        stream.incoming.put(_GONE)
        self.lock.notify_all()

    def _close_all(self) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            self._gone(stream)
        self.streams.clear()
        self.lock.notify_all()

    def close(self) -> None:
        """End every call (handlers see their requests end, their writes fail) and the writer,
        and wait for the handlers to finish (an export removes its staging folder), 5 s at most."""
        with self.lock:
            if not self.closed:
                self._close_all()
            handlers = list(self.handlers)
        self.writer.join(5)
        deadline = time.monotonic() + 5
        for handler in handlers:
            if handler is not threading.current_thread():
                handler.join(max(0.0, deadline - time.monotonic()))

