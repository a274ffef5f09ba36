"""gRPC's framing over HTTP/2, shared by our client (`h2_client`) and server (`h2_server`)
(grpc/doc/PROTOCOL-HTTP2.md): every message is a 5-byte prefix (compressed flag 0, big-endian
length) and its bytes, cut anywhere into DATA frames; a call ends with `grpc-status` (and a
percent-encoded `grpc-message`) in its trailers. We never compress, and do not announce that
we accept compression, so no peer sends a compressed message."""

from __future__ import annotations

import queue
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import hyperframe.frame

# gRPC status codes (grpc/doc/statuscodes.md)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
PERMISSION_DENIED, FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 7, 9, 12, 13, 14
STATUS_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
                5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
                9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
                13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}

MAX_MESSAGE = 64 << 20  # the largest message either side takes
TAKEN_BATCH = 1 << 20  # bytes a reader takes before it says so (under the connection's lock)


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class Deframer:
    """Whole messages out of a stream's DATA, cut anywhere."""

    def __init__(self) -> None:
        self.partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages `data` completes. ValueError for a compressed or oversized one."""
        self.partial += data
        messages = []
        while len(self.partial) >= 5:
            length = int.from_bytes(self.partial[1:5], "big")
            if self.partial[0] != 0 or length > MAX_MESSAGE:
                raise ValueError("a compressed or oversized gRPC message")
            if len(self.partial) < 5 + length:
                break
            messages.append(bytes(self.partial[5:5 + length]))
            del self.partial[:5 + length]
        return messages


def taken_in_batches(items: queue.SimpleQueue[Any] | queue.Queue[Any], end: Callable[[Any], bool],
                     taken: Callable[[int], None]) -> Iterator[Any]:
    """The messages of a call's queue until an `end` item (which stays for a second look),
    telling `taken(bytes)` what was taken, a batch at a time (each costs a lock the
    connection's reader wants too) and whenever the queue is empty (the peer may be waiting
    for that window)."""
    pending = 0
    while True:
        try:
            item = items.get_nowait()
        except queue.Empty:
            if pending:
                taken(pending)
                pending = 0
            item = items.get()
        if end(item):
            items.put(item)
            if pending:
                taken(pending)
            return
        pending += len(item) + 5
        if pending >= TAKEN_BATCH:
            taken(pending)
            pending = 0
        yield item


def quote(text: str) -> str:
    """`grpc-message` is percent-encoded UTF-8 (printable ASCII but '%' kept as is); a file
    name's byte that is not UTF-8 (a lone surrogate here) is written as `\\udce9`."""
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", errors="backslashreplace")


def unquote(text: str) -> str:
    return urllib.parse.unquote(text, errors="replace")


def status_of(fields: dict[str, str]) -> tuple[int, str]:
    """(code, details) from a response's trailers (or trailers-only headers); a response
    without `grpc-status` is UNKNOWN, as gRPC's clients take it."""
    try:
        code = int(fields["grpc-status"])
    except (KeyError, ValueError):
        http = fields.get(":status", "")
        return UNKNOWN, f"the server answered without a gRPC status (HTTP {http or '?'})"
    return code, unquote(fields.get("grpc-message", ""))


def _short_data_repr(data: bytes | None, _whole: object = hyperframe.frame._raw_data_repr) -> str:
    """The same text as hyperframe's own, from the 11 bytes it shows (20 hex digits and "...").
    h2 logs `repr()` of every frame it receives, whether or not anything logs it, and
    hyperframe's repr hexlifies the whole payload first: 1 s of CPU for 200 MB received."""
    return _whole(data[:11] if data else data)  # type: ignore[operator]


hyperframe.frame._raw_data_repr = _short_data_repr
