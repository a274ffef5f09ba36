"""BuildKit's progress merged into printable events, in the order `docker build --progress=plain`
prints them. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from dataclasses import field, replace
from functools import lru_cache
from typing import Literal

from ...records import record
from .wire import StatusResponse, Vertex, VertexLog

_STEP = re.compile(r"^\[(?:(?P<platform>[^\s\]]+/[^\s\]]+) )?(?:(?P<stage>[^\s\]/]+) )?"
                   r"(?P<index>\d+)/(?P<total>\d+)\] (?P<text>.*)$", re.DOTALL)
_BRACKETED = re.compile(r"^\[(?:(?P<platform>[^\s\]]+/[^\s\]]+) )?(?P<stage>[^\]]+)\] (?P<text>.*)$", re.DOTALL)


@record
class StepName:
    """A vertex name taken apart. `[build 2/3] RUN go build` is stage "build", index 2,
    total 3, text "RUN go build"; `[internal] load ...` is stage "internal" with no index;
    `exporting to image` has no stage. With a single stage BuildKit names none, even for
    `FROM x AS build` (`[2/3] RUN ...`): stage None. Unnamed stages of a multi-stage file
    are `stage-0`, `stage-1`, ... Steps shared by several stages (the same FROM) are one
    vertex, named after one of them. In a solve for several platforms BuildKit puts the
    platform a step runs on first (`[linux/arm64 build 2/3] ...`, `[linux/arm64 internal]
    load metadata for ...`): `platform`."""

    stage: str | None
    index: int | None
    total: int | None
    text: str
    platform: str | None = None


@lru_cache(maxsize=4096)
def parse_name(name: str) -> StepName:
    """(Kept: the progress view asks again for every vertex at each step done, 1,800 times in a
    20-stage build, for a few dozen names; a StepName is immutable.)"""
    match = _STEP.match(name)
    if match:
        return StepName(match["stage"], int(match["index"]), int(match["total"]), match["text"], match["platform"])
    match = _BRACKETED.match(name)
    if match:
        return StepName(match["stage"], None, None, match["text"], match["platform"])
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


@record
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


@record(frozen=False)
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

