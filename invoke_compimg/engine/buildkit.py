"""The BuildKit wire layer: one `POST /build?version=2` through the SDK's low-level client.

The Docker SDK has no BuildKit support, so this module speaks the engine's HTTP API itself:
it packs the context (`context_tar`), sends one solve (`solve`), decodes BuildKit's progress
(`decode_status`: moby/buildkit api/services/control/control.proto, by hand, with no protobuf
dependency) and merges it into printable events (`Progress`, pure, no I/O). It knows nothing
of Invoke or of the stage graph.
"""

from __future__ import annotations

import base64
import json
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, Literal

from ..errors import EngineError, UserError

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
class VertexStatus:
    """Progress of one sub-task of a vertex (a layer being extracted, a context transfer)."""

    id: str = ""
    vertex: str = ""
    name: str = ""
    current: int = 0
    total: int = 0
    timestamp: float | None = None
    started: float | None = None
    completed: float | None = None


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
    statuses: tuple[VertexStatus, ...] = ()
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


def _vertex_status(buf: bytes) -> VertexStatus:
    values: dict[str, Any] = {}
    names = {1: "id", 2: "vertex", 3: "name"}
    times = {6: "timestamp", 7: "started", 8: "completed"}
    for number, item in _fields(buf):
        if number in names:
            values[names[number]] = _text(item)
        elif number in (4, 5) and isinstance(item, int):
            values["current" if number == 4 else "total"] = _int64(item)
        elif number in times:
            values[times[number]] = _timestamp(item)
    return VertexStatus(**values)


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
    """Decode one moby.buildkit.v1.StatusResponse; unknown fields are skipped."""
    parts: dict[int, list[Any]] = {1: [], 2: [], 3: [], 4: []}
    decoders = {1: _vertex, 2: _vertex_status, 3: _vertex_log, 4: _vertex_warning}
    for number, item in _fields(payload):
        if number in decoders and isinstance(item, bytes):
            parts[number].append(decoders[number](item))
    return StatusResponse(tuple(parts[1]), tuple(parts[2]), tuple(parts[3]), tuple(parts[4]))


# --- the build context ---------------------------------------------------------------------


# --- one solve -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveResult:
    image_id: str | None  # from the `moby.image.id` message; None when the solve failed
    error: str | None  # the final errorDetail message, if any


class BuildRejected(EngineError):
    """The engine refused the request before any progress (HTTP 4xx/5xx): a Dockerfile it
    cannot parse, an unknown target, a bad option. `engine_message` is its text, unchanged."""

    def __init__(self, engine_message: str, status_code: int | None) -> None:
        self.engine_message = engine_message
        self.status_code = status_code
        super().__init__(f"the engine refused the build: {engine_message}")


def _explanation(exc: Any) -> str:
    text = getattr(exc, "explanation", None)
    return " ".join(str(text if isinstance(text, str) and text else exc).split())


def solve(api: Any, context: IO[bytes], *, dockerfile: str, target: str | None = None,
          tags: Sequence[str] = (), build_args: Mapping[str, str] | None = None, no_cache: bool = False,
          pull: bool = False, network: str | None = None, cache_from: Sequence[str] = (),
          labels: Mapping[str, str] | None = None, build_id: str | None = None,
          on_status: Callable[[StatusResponse], object] = lambda status: None,
          on_message: Callable[[dict[str, Any]], None] | None = None) -> SolveResult:
    """Run one BuildKit solve of `dockerfile` (a path inside the `context` tar) and stream its
    progress to `on_status`. `network` is sent as is (see `network_for`). `on_message`, if
    given, sees every raw JSON message first (the tests record streams with it).

    Raises BuildRejected when the engine answers with an HTTP error before streaming; a
    broken connection raises the transport's own error (`engine.engine_errors` maps it).
    Whatever ends the call (the end of the stream, an exception in a callback,
    KeyboardInterrupt) closes the response, and the engine cancels a solve whose
    connection is closed.
    """
    import docker

    params: dict[str, Any] = {"version": "2", "dockerfile": dockerfile, "t": list(tags),
                              "buildargs": json.dumps(dict(build_args or {})),
                              "labels": json.dumps(dict(labels or {})),
                              "cachefrom": json.dumps(list(cache_from))}
    if target:
        params["target"] = target
    if no_cache:
        params["nocache"] = "1"
    if pull:
        params["pull"] = "1"
    if network:
        params["networkmode"] = network
    if build_id:
        params["buildid"] = build_id
    context.seek(0)
    response = None
    image_id: str | None = None
    error: str | None = None
    try:
        # timeout=None: a silent `RUN` may send nothing for minutes; the SDK's build() does the same
        response = api._post(api._url("/build"), params=params, data=context, stream=True, timeout=None,
                             headers={"Content-Type": "application/x-tar"})
        try:
            api._raise_for_status(response)
        except docker.errors.APIError as exc:
            raise BuildRejected(_explanation(exc), exc.status_code) from exc
        for message in api._stream_helper(response, decode=True):
            if not isinstance(message, dict):
                continue
            if on_message is not None:
                on_message(message)
            aux = message.get("aux")
            if message.get("id") == "moby.buildkit.trace" and isinstance(aux, str):
                try:
                    status = decode_status(base64.b64decode(aux))
                except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
                    raise EngineError(f"unreadable BuildKit progress from the engine ({exc})") from exc
                on_status(status)
            elif message.get("id") == "moby.image.id" and isinstance(aux, dict):
                image_id = str(aux.get("ID") or "") or None
            elif "errorDetail" in message or "error" in message:
                detail = message.get("errorDetail") or {}
                error = str(detail.get("message") or message.get("error") or "build failed")
    finally:
        if response is not None:
            response.close()  # closes the connection: the engine cancels an unfinished solve
    if error is not None:
        image_id = None
    return SolveResult(image_id=image_id, error=error)


def cancel(api: Any, build_id: str) -> None:
    """Ask the engine to cancel the solve started with `build_id` (a no-op if it has ended)."""
    import docker

    try:
        response = api._post(api._url("/build/cancel"), params={"id": build_id})
        api._raise_for_status(response)
    except docker.errors.APIError as exc:
        raise EngineError(f"cancelling build {build_id}: {_explanation(exc)}") from exc


_bridge_cache: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
BUILDKIT_NETWORKS = ("default", "none", "host")


def network_for(api: Any, requested: str | None) -> str | None:
    """The `networkmode` to send. BuildKit knows only default, none and host; `default`
    means the `bridge` network, so on an engine without one (dockerd --bridge=none) a
    build that did not choose a network is sent `none`. Asks the engine once per client."""
    if requested not in (None, "default"):
        if requested not in BUILDKIT_NETWORKS:
            raise UserError(f"network {requested!r}: BuildKit builds can use only "
                            f"{', '.join(BUILDKIT_NETWORKS)}")
        return requested
    if api not in _bridge_cache:
        import docker

        try:
            found = api.networks(names=["bridge"])
        except docker.errors.APIError as exc:
            raise EngineError(f"listing networks: {_explanation(exc)}") from exc
        _bridge_cache[api] = any(n.get("Name") == "bridge" for n in found or [])
    return requested if _bridge_cache[api] else "none"


# --- progress: merge updates, emit what `--progress=plain` would print ---------------------


_STEP = re.compile(r"^\[(?:(?P<platform>[^\s\]]+/[^\s\]]+) )?(?:(?P<stage>[^\s\]/]+) )?"
                   r"(?P<index>\d+)/(?P<total>\d+)\] (?P<text>.*)$", re.DOTALL)
_BRACKETED = re.compile(r"^\[(?P<stage>[^\]]+)\] (?P<text>.*)$", re.DOTALL)


@dataclass(frozen=True)
class StepName:
    """A vertex name taken apart. `[build 2/3] RUN go build` is stage "build", index 2,
    total 3, text "RUN go build"; `[internal] load ...` is stage "internal" with no index;
    `exporting to image` has no stage. With a single stage BuildKit names none, even for
    `FROM x AS build` (`[2/3] RUN ...`): stage None. Unnamed stages of a multi-stage file
    are `stage-0`, `stage-1`, ... Steps shared by several stages (the same FROM) are one
    vertex, named after one of them."""

    stage: str | None
    index: int | None
    total: int | None
    text: str


def parse_name(name: str) -> StepName:
    match = _STEP.match(name)
    if match:
        return StepName(match["stage"], int(match["index"]), int(match["total"]), match["text"])
    match = _BRACKETED.match(name)
    if match:
        return StepName(match["stage"], None, None, match["text"])
    return StepName(None, None, None, name)


def merge_vertex(old: Vertex | None, new: Vertex) -> Vertex:
    """A later update of a vertex wins field by field where it says something."""
    if old is None:
        return new
    return replace(old, inputs=new.inputs or old.inputs, name=new.name or old.name,
                   cached=new.cached or old.cached, error=new.error or old.error,
                   started=old.started if new.started is None else new.started,
                   completed=old.completed if new.completed is None else new.completed)


EventKind = Literal["start", "log", "cached", "done", "error", "warning"]


@dataclass(frozen=True)
class ProgressEvent:
    """Something to print, in the order `docker build --progress=plain` prints it.

    kind    start: the vertex began (or was found cached);  text is its name
            log: one whole output line (no newline);         stream 1 stdout, 2 stderr
            cached: done from the cache;  done: finished,    seconds = completed - started
            error: it failed;                                text is Vertex.error
            warning: a BuildKit warning;                     text is its short message
    number  #N: vertexes are numbered in the order they are first shown, from 1
    """

    kind: EventKind
    number: int
    vertex: str  # digest
    name: str
    step: StepName
    text: str = ""
    stream: int = 0
    seconds: float | None = None

    def plain(self) -> str:
        """The line `--progress=plain` would print (without its timestamps on logs)."""
        if self.kind == "start":
            return f"#{self.number} {self.name}"
        if self.kind == "log":
            return f"#{self.number} {self.text}"
        if self.kind == "cached":
            return f"#{self.number} CACHED"
        if self.kind == "done":
            return f"#{self.number} DONE {self.seconds or 0:.1f}s"
        if self.kind == "error":
            return f"#{self.number} ERROR: {self.text}"
        return f"#{self.number} WARNING: {self.text}"


@dataclass
class Progress:
    """Merges StatusResponses (pure: no I/O, no clock) and turns them into ProgressEvents.

    `feed` returns the new events; `finish` flushes partial log lines at the end. The merged
    state stays readable: `vertexes` (by digest, in order of first sight), `lines` (each
    vertex's whole log lines so far, for error reports), `failed()`, `stage_seconds()`.
    """

    vertexes: dict[str, Vertex] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)
    _numbers: dict[str, int] = field(default_factory=dict)
    _reported: set[tuple[str, str]] = field(default_factory=set)
    _partial: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def feed(self, status: StatusResponse) -> list[ProgressEvent]:
        events: list[ProgressEvent] = []
        for update in status.vertexes:
            vertex = merge_vertex(self.vertexes.get(update.digest), update)
            self.vertexes[update.digest] = vertex
            if vertex.started is not None or vertex.cached:
                events += self._once(vertex, "start", vertex.name)
            if vertex.cached and (vertex.digest, "done") not in self._reported:
                events += self._once(vertex, "cached")
            if vertex.error:
                events += self._flush(vertex.digest)
                events += self._once(vertex, "error", vertex.error)
            elif vertex.completed is not None and not vertex.cached:
                events += self._flush(vertex.digest)
                seconds = vertex.completed - vertex.started if vertex.started is not None else None
                events += self._once(vertex, "done", seconds=seconds)
        for log in status.logs:
            events += self._log(log)
        for warning in status.warnings:
            vertex = self.vertexes.get(warning.vertex) or Vertex(digest=warning.vertex)
            text = warning.short.decode("utf-8", "replace")
            events.append(self._event(vertex, "warning", text))
        return events

    def finish(self) -> list[ProgressEvent]:
        """Partial lines still held (output that did not end with a newline)."""
        events: list[ProgressEvent] = []
        for digest in list({d for d, _ in self._partial}):
            events += self._flush(digest)
        return events

    def failed(self) -> list[Vertex]:
        return [v for v in self.vertexes.values() if v.error]

    def stage_seconds(self) -> dict[str, float]:
        """Seconds each named stage spent executing: the sum of its vertexes' completed -
        started (cached ones take ~0). A sum, not a span, so time a `COPY --from` spends
        waiting for another stage is not counted; `internal` and unstaged vertexes are left
        out, and an unnamed stage is reported as ""."""
        totals: dict[str, float] = {}
        for vertex in self.vertexes.values():
            step = parse_name(vertex.name)
            if step.index is None or step.stage == "internal":
                continue
            key = step.stage or ""
            spent = 0.0
            if vertex.started is not None and vertex.completed is not None:
                spent = max(0.0, vertex.completed - vertex.started)
            totals[key] = totals.get(key, 0.0) + spent
        return totals

    def _number(self, digest: str) -> int:
        return self._numbers.setdefault(digest, len(self._numbers) + 1)

    def _event(self, vertex: Vertex, kind: EventKind, text: str = "", *, stream: int = 0,
               seconds: float | None = None) -> ProgressEvent:
        return ProgressEvent(kind, self._number(vertex.digest), vertex.digest, vertex.name,
                             parse_name(vertex.name), text, stream, seconds)

    def _once(self, vertex: Vertex, kind: EventKind, text: str = "", *,
              seconds: float | None = None) -> list[ProgressEvent]:
        if (vertex.digest, kind) in self._reported:
            return []
        self._reported.add((vertex.digest, kind))
        return [self._event(vertex, kind, text, seconds=seconds)]

    def _log(self, log: VertexLog) -> list[ProgressEvent]:
        vertex = self.vertexes.get(log.vertex) or Vertex(digest=log.vertex)
        events = self._once(vertex, "start", vertex.name)  # logs of a vertex never announced
        data = self._partial.pop((log.vertex, log.stream), b"") + log.msg
        *whole, rest = data.split(b"\n")
        if rest:
            self._partial[(log.vertex, log.stream)] = rest
        for raw in whole:
            events.append(self._line(vertex, raw, log.stream))
        return events

    def _line(self, vertex: Vertex, raw: bytes, stream: int) -> ProgressEvent:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.setdefault(vertex.digest, []).append(text)
        return self._event(vertex, "log", text, stream=stream)

    def _flush(self, digest: str) -> list[ProgressEvent]:
        vertex = self.vertexes.get(digest) or Vertex(digest=digest)
        events = []
        for stream in (1, 2):
            rest = self._partial.pop((digest, stream), None)
            if rest:
                events.append(self._line(vertex, rest, stream))
        return events

