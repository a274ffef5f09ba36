"""BuildKit's progress message, `moby.buildkit.v1.StatusResponse`, decoded from its protobuf
wire format by hand: the message is four fields deep and stable, so a small decoder beats a
protobuf dependency on the path of every build. Pure: bytes in, dataclasses out."""

from __future__ import annotations

from typing import Any

from ...records import record
from ..protowire import ProtocolError, fields, int64, text

__all__ = ["ProtocolError", "StatusResponse", "Vertex", "VertexLog", "VertexWarning", "decode_status"]


def _timestamp(value: int | bytes) -> float | None:
    """google.protobuf.Timestamp (seconds=1, nanos=2) as seconds since the epoch."""
    if not isinstance(value, bytes):
        return None
    seconds = nanos = 0
    for number, item in fields(value):
        if number == 1 and isinstance(item, int):
            seconds = int64(item)
        elif number == 2 and isinstance(item, int):
            nanos = int64(item)
    return seconds + nanos / 1e9


@record
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


@record
class VertexLog:
    """A chunk of a vertex's output: `stream` 1 is stdout, 2 stderr; not split on lines."""

    vertex: str = ""
    timestamp: float | None = None
    stream: int = 0
    msg: bytes = b""


@record
class VertexWarning:
    vertex: str = ""
    level: int = 0
    short: bytes = b""
    detail: tuple[bytes, ...] = ()
    url: str = ""


@record
class StatusResponse:
    vertexes: tuple[Vertex, ...] = ()
    logs: tuple[VertexLog, ...] = ()
    warnings: tuple[VertexWarning, ...] = ()


def _vertex(buf: bytes) -> Vertex:
    values: dict[str, Any] = {}
    inputs: list[str] = []
    for number, item in fields(buf):
        if number == 1:
            values["digest"] = text(item)
        elif number == 2:
            inputs.append(text(item))
        elif number == 3:
            values["name"] = text(item)
        elif number == 4 and isinstance(item, int):
            values["cached"] = bool(item)
        elif number == 5:
            values["started"] = _timestamp(item)
        elif number == 6:
            values["completed"] = _timestamp(item)
        elif number == 7:
            values["error"] = text(item)
    return Vertex(inputs=tuple(inputs), **values)


def _vertex_log(buf: bytes) -> VertexLog:
    values: dict[str, Any] = {}
    for number, item in fields(buf):
        if number == 1:
            values["vertex"] = text(item)
        elif number == 2:
            values["timestamp"] = _timestamp(item)
        elif number == 3 and isinstance(item, int):
            values["stream"] = int64(item)
        elif number == 4 and isinstance(item, bytes):
            values["msg"] = item
    return VertexLog(**values)


def _vertex_warning(buf: bytes) -> VertexWarning:
    values: dict[str, Any] = {}
    detail: list[bytes] = []
    for number, item in fields(buf):
        if number == 1:
            values["vertex"] = text(item)
        elif number == 2 and isinstance(item, int):
            values["level"] = int64(item)
        elif number == 3 and isinstance(item, bytes):
            values["short"] = item
        elif number == 4 and isinstance(item, bytes):
            detail.append(item)
        elif number == 5:
            values["url"] = text(item)
    return VertexWarning(detail=tuple(detail), **values)


def decode_status(payload: bytes) -> StatusResponse:
    """Decode one moby.buildkit.v1.StatusResponse; unknown fields are skipped, and so are
    the per-vertex transfer statuses (field 2), which nothing here shows."""
    parts: dict[int, list[Any]] = {1: [], 3: [], 4: []}
    decoders = {1: _vertex, 3: _vertex_log, 4: _vertex_warning}
    for number, item in fields(payload):
        if number in decoders and isinstance(item, bytes):
            parts[number].append(decoders[number](item))
    return StatusResponse(tuple(parts[1]), tuple(parts[3]), tuple(parts[4]))
