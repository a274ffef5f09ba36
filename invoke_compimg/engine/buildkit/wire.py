"""BuildKit's progress message, `moby.buildkit.v1.StatusResponse`, decoded from its protobuf
wire format by hand: the message is four fields deep and stable, so a small decoder beats a
protobuf dependency on the path of every build. Pure: bytes in, dataclasses out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# --- protobuf wire format ------------------------------------------------------------------


class ProtocolError(ValueError):
    """A progress payload that is not the protobuf message it should be."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of one message: an int for varints, bytes for
    length-delimited fields; fixed32/64 fields are skipped (none of ours use them)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtocolError("truncated length-delimited field")
            yield number, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise ProtocolError("truncated fixed-width field")
        else:  # groups (3, 4) are proto2-only; nothing in control.proto uses them
            raise ProtocolError(f"unsupported wire type {wire}")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def _timestamp(value: int | bytes) -> float | None:
    """google.protobuf.Timestamp (seconds=1, nanos=2) as seconds since the epoch."""
    if not isinstance(value, bytes):
        return None
    seconds = nanos = 0
    for number, item in _fields(value):
        if number == 1 and isinstance(item, int):
            seconds = _int64(item)
        elif number == 2 and isinstance(item, int):
            nanos = _int64(item)
    return seconds + nanos / 1e9


@dataclass(frozen=True)
class Vertex:
    """One node of the solve graph (a Dockerfile step, a context load, the export, ...).
    Updates for the same `digest` arrive repeatedly; see `merge_vertex`."""

    digest: str = ""
    inputs: tuple[str, ...] = ()
    name: str = ""
    cached: bool = False
    started: float | None = None  # seconds since the epoch
    completed: float | None = None
    error: str = ""


@dataclass(frozen=True)
class VertexLog:
    """A chunk of a vertex's output: `stream` 1 is stdout, 2 stderr; not split on lines."""

    vertex: str = ""
    timestamp: float | None = None
    stream: int = 0
    msg: bytes = b""


@dataclass(frozen=True)
class VertexWarning:
    vertex: str = ""
    level: int = 0
    short: bytes = b""
    detail: tuple[bytes, ...] = ()
    url: str = ""


@dataclass(frozen=True)
class StatusResponse:
    vertexes: tuple[Vertex, ...] = ()
    logs: tuple[VertexLog, ...] = ()
    warnings: tuple[VertexWarning, ...] = ()


def _vertex(buf: bytes) -> Vertex:
    values: dict[str, Any] = {}
    inputs: list[str] = []
    for number, item in _fields(buf):
        if number == 1:
            values["digest"] = _text(item)
        elif number == 2:
            inputs.append(_text(item))
        elif number == 3:
            values["name"] = _text(item)
        elif number == 4 and isinstance(item, int):
            values["cached"] = bool(item)
        elif number == 5:
            values["started"] = _timestamp(item)
        elif number == 6:
            values["completed"] = _timestamp(item)
        elif number == 7:
            values["error"] = _text(item)
    return Vertex(inputs=tuple(inputs), **values)


def _vertex_log(buf: bytes) -> VertexLog:
    values: dict[str, Any] = {}
    for number, item in _fields(buf):
        if number == 1:
            values["vertex"] = _text(item)
        elif number == 2:
            values["timestamp"] = _timestamp(item)
        elif number == 3 and isinstance(item, int):
            values["stream"] = _int64(item)
        elif number == 4 and isinstance(item, bytes):
            values["msg"] = item
    return VertexLog(**values)


def _vertex_warning(buf: bytes) -> VertexWarning:
    values: dict[str, Any] = {}
    detail: list[bytes] = []
    for number, item in _fields(buf):
        if number == 1:
            values["vertex"] = _text(item)
        elif number == 2 and isinstance(item, int):
            values["level"] = _int64(item)
        elif number == 3 and isinstance(item, bytes):
            values["short"] = item
        elif number == 4 and isinstance(item, bytes):
            detail.append(item)
        elif number == 5:
            values["url"] = _text(item)
    return VertexWarning(detail=tuple(detail), **values)


def decode_status(payload: bytes) -> StatusResponse:
    """Decode one moby.buildkit.v1.StatusResponse; unknown fields are skipped, and so are
    the per-vertex transfer statuses (field 2), which nothing here shows."""
    parts: dict[int, list[Any]] = {1: [], 3: [], 4: []}
    decoders = {1: _vertex, 3: _vertex_log, 4: _vertex_warning}
    for number, item in _fields(payload):
        if number in decoders and isinstance(item, bytes):
            parts[number].append(decoders[number](item))
    return StatusResponse(tuple(parts[1]), tuple(parts[3]), tuple(parts[4]))
