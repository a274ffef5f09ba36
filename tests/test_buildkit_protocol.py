"""The BuildKit wire layer (invoke_compimg/buildkit.py).

Unit tests decode streams recorded from a real engine (tests/data/buildkit/*.jsonl, made by
tests/buildkit_capture.py) and need no engine; tests marked `engine` run real solves.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import processes_with
from hypothesis import given, settings
from hypothesis import strategies as st

from invoke_compimg.building.context import context_tar
from invoke_compimg.engine import buildkit as bk
from invoke_compimg.engine import protowire
from invoke_compimg.engine.client import Engine
from invoke_compimg.engine.control import messages as control_messages
from invoke_compimg.errors import BuildRejected, UserError

DATA = Path(__file__).resolve().parent / "data" / "buildkit"


# --- helpers -------------------------------------------------------------------------------


def messages(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def statuses(name: str) -> list[bk.StatusResponse]:
    return [bk.decode_status(base64.b64decode(m["aux"])) for m in messages(name)
            if m.get("id") == "moby.buildkit.trace"]


def replay(name: str) -> tuple[bk.Progress, list[bk.ProgressEvent]]:
    progress = bk.Progress()
    events: list[bk.ProgressEvent] = []
    for status in statuses(name):
        events += progress.feed(status)
    events += progress.finish()
    return progress, events


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return key(number, 0) + varint(value)
    return key(number, 2) + varint(len(value)) + value


# --- the protobuf decoder ------------------------------------------------------------------


def test_decoder_reads_every_field_and_skips_unknown_ones() -> None:
    started = field(1, 1_700_000_000) + field(2, 250_000_000)
    vertex = (field(1, b"sha256:aa") + field(2, b"sha256:in1") + field(2, b"sha256:in2")
              + field(3, b"[build 2/3] RUN go build") + field(4, 1) + field(5, started)
              + field(6, field(1, 1_700_000_002)) + field(7, b"boom")
              + field(8, b"\x0a\x01x")  # progressGroup: not decoded
              + key(20, 1) + b"\0" * 8 + key(21, 5) + b"\0" * 4 + field(22, 300))  # unknown fields
    status = field(1, b"layer") + field(2, b"sha256:aa") + field(4, 5) + field(5, 10) + field(6, started)
    log = field(1, b"sha256:aa") + field(2, started) + field(3, 2) + field(4, b"oops\n")
    warning = field(1, b"sha256:aa") + field(2, 1) + field(3, b"short") + field(4, b"d1") + field(4, b"d2") \
        + field(5, b"https://example.invalid/w")
    payload = field(1, vertex) + field(2, status) + field(3, log) + field(4, warning) + field(9, b"future")

    decoded = bk.decode_status(payload)

    assert decoded.vertexes == (bk.Vertex("sha256:aa", ("sha256:in1", "sha256:in2"), "[build 2/3] RUN go build",
                                          True, 1_700_000_000.25, 1_700_000_002.0, "boom"),)
    assert not hasattr(decoded, "statuses")  # transfer statuses are skipped: nothing shows them
    assert decoded.logs == (bk.VertexLog("sha256:aa", 1_700_000_000.25, 2, b"oops\n"),)
    assert decoded.warnings == (bk.VertexWarning("sha256:aa", 1, b"short", (b"d1", b"d2"),
                                                 "https://example.invalid/w"),)


def test_decoder_negative_int64_and_empty_message() -> None:
    assert bk.decode_status(b"") == bk.StatusResponse()
    decoded = bk.decode_status(field(3, field(3, (1 << 64) - 1)))
    assert decoded.logs[0].stream == -1


@pytest.mark.parametrize("payload", [
    b"\x0a",  # key, no length
    b"\x0a\x05abc",  # length past the end
    b"\x0a\x80",  # unfinished varint
    key(1, 1) + b"\0\0",  # fixed64 cut short
    key(1, 3),  # a group: proto2 only
    b"\xff" * 11,  # varint longer than 10 bytes
])
def test_decoder_rejects_broken_payloads(payload: bytes) -> None:
    with pytest.raises(bk.ProtocolError):
        bk.decode_status(payload)


# --- the solve's own messages, written by hand --------------------------------------------

_TEXT = st.text(max_size=12)
_ATTRS = st.dictionaries(_TEXT, _TEXT, max_size=4)
_OPTIONS = st.lists(st.tuples(_TEXT, _ATTRS), max_size=3)


@settings(max_examples=150, deadline=None)
@given(ref=_TEXT, frontend=_TEXT, frontend_attrs=_ATTRS, session=_TEXT, exporter=_TEXT, exporter_attrs=_ATTRS,
       imports=_OPTIONS, exports=_OPTIONS, entitlements=st.lists(_TEXT, max_size=3))
def test_the_solve_request_reads_as_the_generated_module_writes_it(
        ref: str, frontend: str, frontend_attrs: dict[str, str], session: str, exporter: str,
        exporter_attrs: dict[str, str], imports: list[tuple[str, dict[str, str]]],
        exports: list[tuple[str, dict[str, str]]], entitlements: list[str]) -> None:
    from invoke_compimg.engine.control.proto import control_pb2 as pb

    ours = control_messages.solve_request(ref=ref, frontend=frontend, frontend_attrs=frontend_attrs, session=session,
                                  exporter=exporter, exporter_attrs=exporter_attrs, cache_imports=imports,
                                  cache_exports=exports, entitlements=entitlements)
    theirs = pb.SolveRequest(
        Ref=ref, Frontend=frontend, FrontendAttrs=frontend_attrs, Session=session, Exporter=exporter,
        ExporterAttrs=exporter_attrs, Entitlements=entitlements, Cache=pb.CacheOptions(
            Imports=[pb.CacheOptionsEntry(Type=t, Attrs=a) for t, a in imports],
            Exports=[pb.CacheOptionsEntry(Type=t, Attrs=a) for t, a in exports]))
    assert pb.SolveRequest.FromString(ours) == theirs
    if not (frontend_attrs or exporter_attrs or imports or exports):  # (maps: protobuf writes empty values too)
        assert ours == theirs.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(ref=_TEXT, answer=_ATTRS)
def test_status_request_and_solve_response_as_the_generated_module(ref: str, answer: dict[str, str]) -> None:
    from invoke_compimg.engine.control.proto import control_pb2 as pb

    assert control_messages.status_request(ref) == pb.StatusRequest(Ref=ref).SerializeToString()
    assert control_messages.solve_response(pb.SolveResponse(ExporterResponse=answer).SerializeToString()) == answer


def test_a_broken_solve_response_is_a_protocol_error() -> None:
    with pytest.raises(bk.ProtocolError):
        control_messages.solve_response(b"\x0a\x05abc")
    with pytest.raises(bk.ProtocolError):
        control_messages.solve_response(field(1, 7))  # an entry that is not a message


def test_negative_varints_are_ten_bytes_as_protobuf_writes_them() -> None:
    assert protowire.varint_bytes(-1) == b"\xff" * 9 + b"\x01"
    assert protowire.int64(protowire.varint(protowire.varint_bytes(-5), 0)[0]) == -5
    assert protowire.varint_bytes(300) == varint(300)


# --- recorded streams ----------------------------------------------------------------------


def plain(event: bk.ProgressEvent) -> str:
    """The line `docker build --progress=plain` prints for `event` (without its timestamps)."""
    if event.kind in ("start", "log"):
        return f"#{event.number} {event.name if event.kind == 'start' else event.text}"
    if event.kind == "cached":
        return f"#{event.number} CACHED"
    if event.kind == "done":
        return f"#{event.number} DONE {event.seconds or 0:.1f}s"
    if event.kind == "error":
        return f"#{event.number} ERROR: {event.text}"
    return f"#{event.number} WARNING: {event.text}"


def test_every_recorded_trace_decodes_and_has_vertexes() -> None:
    for path in sorted(DATA.glob("*.jsonl")):
        decoded = statuses(path.stem)
        assert decoded, path
        assert any(s.vertexes for s in decoded), path
        assert all(v.digest.startswith("sha256:") for s in decoded for v in s.vertexes), path


def test_cold_multi_stage_build_reads_like_plain_progress() -> None:
    progress, events = replay("multi_cold")
    starts = [e for e in events if e.kind == "start"]
    assert [e.number for e in starts] == list(range(1, len(starts) + 1))  # numbered as first shown
    assert len({e.vertex for e in starts}) == len(starts)  # each vertex announced once
    run = next(e for e in starts if e.step.text.startswith("RUN echo out-one"))
    assert run.step == bk.StepName("build", 2, 5, run.step.text)
    assert plain(run) == f"#{run.number} {run.name}"

    lines = [(e.text, e.stream) for e in events if e.kind == "log" and e.vertex == run.vertex]
    assert sorted(lines) == [("err-one", 2), ("no-newline", 1), ("out-one", 1), ("out-two", 1)]
    assert [t for t, s in lines if s == 1] == ["out-one", "out-two", "no-newline"]  # order kept per stream
    done = [e for e in events if e.vertex == run.vertex and e.kind == "done"]
    assert len(done) == 1 and done[0].seconds is not None and done[0].seconds > 0
    assert plain(done[0]).startswith(f"#{run.number} DONE ") and plain(done[0]).endswith("s")
    # the partial last line was flushed before DONE, not at the end
    assert events.index(done[0]) > max(i for i, e in enumerate(events) if e.kind == "log" and e.vertex == run.vertex)

    names = [v.name for v in progress.vertexes.values()]
    assert any(n.startswith("[build 3/5] RUN --mount=type=cache") for n in names)
    assert "[build 4/5] COPY --chmod=0751 tool.sh /tool.sh" in names
    assert "[run 2/3] COPY --from=build /out/a.txt /a.txt" in names
    assert "[internal] load remote build context" in names
    mount = next(v for v in progress.vertexes.values() if "--mount=type=cache" in v.name)
    assert progress.lines[mount.digest] == ["cached-mount"]
    assert not progress.failed()
    assert not any(e.kind == "error" for e in events)

    seconds = progress.stage_seconds()
    assert set(seconds) == {"build", "run"}  # no `internal`, no `exporting to image`
    assert seconds["build"] > 0
    assert messages("multi_cold")[-2]["id"] == "moby.image.id"


def test_cached_rebuild_reports_cached_steps_and_no_output() -> None:
    progress, events = replay("multi_cached")
    steps = [v for v in progress.vertexes.values() if (bk.parse_name(v.name).index or 0) > 1]
    assert steps and all(v.cached for v in steps)
    cached = {e.vertex for e in events if e.kind == "cached"}
    assert {v.digest for v in steps} <= cached
    assert all(plain(e) == f"#{e.number} CACHED" for e in events if e.kind == "cached")
    assert not [e for e in events if e.kind == "log"]
    assert all(s < 0.1 for s in progress.stage_seconds().values())
    ids = [m for m in messages("multi_cached") if m.get("id") == "moby.image.id"]
    assert ids == [m for m in messages("multi_cold") if m.get("id") == "moby.image.id"]  # same image


def test_failing_run_names_the_vertex_and_keeps_its_output() -> None:
    progress, events = replay("failing_run")
    [failed] = progress.failed()
    assert failed.name == "[2/2] RUN echo before-failure && echo to-stderr >&2 && exit 3"
    assert "exit code: 3" in failed.error
    assert progress.lines[failed.digest] == ["before-failure", "to-stderr"]
    [error] = [e for e in events if e.kind == "error"]
    assert plain(error) == f"#{error.number} ERROR: {failed.error}"
    assert error.step == bk.StepName(None, 2, 2, "RUN echo before-failure && echo to-stderr >&2 && exit 3")
    final = messages("failing_run")[-1]
    assert "exit code: 3" in final["errorDetail"]["message"]
    assert not [m for m in messages("failing_run") if m.get("id") == "moby.image.id"]


# --- names, merging, log lines -------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("[build 2/3] RUN go build -o /x .", bk.StepName("build", 2, 3, "RUN go build -o /x .")),
    ("[stage-1 2/3] COPY --from=0 /c /c", bk.StepName("stage-1", 2, 3, "COPY --from=0 /c /c")),
    ("[2/2] RUN true", bk.StepName(None, 2, 2, "RUN true")),
    ("[linux/amd64 build 1/2] FROM busybox", bk.StepName("build", 1, 2, "FROM busybox", "linux/amd64")),
    ("[linux/arm64/v8 2/2] RUN true", bk.StepName(None, 2, 2, "RUN true", "linux/arm64/v8")),
    ("[linux/arm64 internal] load metadata for docker.io/library/busybox:latest",
     bk.StepName("internal", None, None, "load metadata for docker.io/library/busybox:latest", "linux/arm64")),
    ("[internal] load build definition from Dockerfile",
     bk.StepName("internal", None, None, "load build definition from Dockerfile")),
    ("exporting to image", bk.StepName(None, None, None, "exporting to image")),
    ("copy /context /", bk.StepName(None, None, None, "copy /context /")),
    ("[run 3/3] RUN printf 'a]b'\nx", bk.StepName("run", 3, 3, "RUN printf 'a]b'\nx")),
])
def test_parse_name(name: str, expected: bk.StepName) -> None:
    assert bk.parse_name(name) == expected


def test_merge_keeps_what_a_later_update_leaves_out() -> None:
    first = bk.Vertex("d", ("i",), "[a 1/1] RUN x", False, 10.0, None, "")
    later = bk.Vertex("d", (), "", False, None, 12.5, "")
    assert bk.merge_vertex(first, later) == bk.Vertex("d", ("i",), "[a 1/1] RUN x", False, 10.0, 12.5, "")
    assert bk.merge_vertex(None, later) is later


def test_log_lines_are_joined_across_messages_and_flushed_at_the_end() -> None:
    progress = bk.Progress()
    vertex = bk.Vertex("d", (), "[a 1/1] RUN x", started=1.0)
    events = progress.feed(bk.StatusResponse(vertexes=(vertex,)))
    for chunk, stream in [(b"hel", 1), (b"warn\n", 2), (b"lo\nwor", 1), (b"ld\r\nlast", 1)]:
        events += progress.feed(bk.StatusResponse(logs=(bk.VertexLog("d", 1.0, stream, chunk),)))
    assert [(e.text, e.stream) for e in events if e.kind == "log"] == [("warn", 2), ("hello", 1), ("world", 1)]
    assert [(e.text, e.kind) for e in progress.finish()] == [("last", "log")]
    assert progress.lines["d"] == ["warn", "hello", "world", "last"]
    assert [plain(e) for e in events[:1]] == ["#1 [a 1/1] RUN x"]


def test_logs_of_an_unknown_vertex_and_warnings_still_print() -> None:
    progress = bk.Progress()
    events = progress.feed(bk.StatusResponse(logs=(bk.VertexLog("x", None, 1, b"hi\n"),),
                                             warnings=(bk.VertexWarning("x", 1, b"careful"),)))
    assert [plain(e) for e in events] == ["#1 ", "#1 hi", "#1 WARNING: careful"]


def test_not_started_vertexes_are_not_announced() -> None:
    progress = bk.Progress()
    assert progress.feed(bk.StatusResponse(vertexes=(bk.Vertex("d", name="[a 1/1] RUN x"),))) == []
    events = progress.feed(bk.StatusResponse(vertexes=(bk.Vertex("d", name="[a 1/1] RUN x", started=3.0,
                                                                 completed=4.5),)))
    assert [plain(e) for e in events] == ["#1 [a 1/1] RUN x", "#1 DONE 1.5s"]
    assert progress.stage_seconds() == {"a": 1.5}


# --- the context tar -----------------------------------------------------------------------

LONG = "d/" + "a" * 120 + "/" + "b" * 60 + ".txt"


def make_context(root: Path) -> list[str]:
    (root / "target.txt").write_text("target\n")
    (root / "link").symlink_to("target.txt")
    (root / "empty").mkdir()
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o751)
    (root / LONG).parent.mkdir(parents=True)
    (root / LONG).write_text("long\n")
    (root / "Dockerfile").write_text("the user's own, replaced by the extra file\n")
    return ["target.txt", "link", "empty", "run.sh", "d", "d/" + "a" * 120, LONG, "Dockerfile"]


def test_context_tar_is_gnu_with_links_dirs_long_names_and_extras_first(tmp_path: Path) -> None:
    files = make_context(tmp_path)
    with context_tar(str(tmp_path), files, [("Dockerfile", "FROM busybox\n"), (".dockerignore", "x\n")]) as tar:
        head = tar.read(1024)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            members = {m.name: m for m in archive.getmembers()}
            dockerfile = archive.extractfile("Dockerfile")
            assert dockerfile is not None and dockerfile.read() == b"FROM busybox\n"
    assert b"PaxHeader" not in head and b"@LongLink" not in head
    assert head[:10] == b"Dockerfile"  # a short first member: the engine sees an archive
    assert list(members)[:2] == ["Dockerfile", ".dockerignore"]
    assert members["link"].issym() and members["link"].linkname == "target.txt"
    assert members["empty"].isdir()
    assert members[LONG].isfile() and members[LONG].size == 5
    assert members["run.sh"].mode == 0o751
    assert members["run.sh"].uid == os.stat(tmp_path / "run.sh").st_uid


def test_context_tar_prefix_keeps_extra_files_outside_the_context(tmp_path: Path) -> None:
    files = make_context(tmp_path)
    with context_tar(str(tmp_path), files, [("Dockerfile", "FROM busybox\n")], prefix="ctx/") as tar, \
            tarfile.open(fileobj=tar) as archive:
        names = archive.getnames()
    assert names[0] == "Dockerfile"
    assert "ctx/Dockerfile" in names and "ctx/link" in names and "ctx/" + LONG in names


def test_context_tar_without_extras_starts_with_a_short_name(tmp_path: Path) -> None:
    files = make_context(tmp_path)
    files.sort(key=len, reverse=True)  # the long name first
    with context_tar(str(tmp_path), files, []) as tar:
        assert b"@LongLink" not in tar.read(1024)


def test_context_tar_unreadable_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothere"):
        context_tar(str(tmp_path), ["nothere"], [])


# --- network_for (engine-free part: a stand-in that only answers GET /networks) -------------


class NetworksOnly(Engine):
    """An Engine that answers only `GET /networks?filters=...` (names containing the one asked)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__({})
        self.names = names
        self.calls = 0

    def get_json(self, path: str, *args: str) -> Any | None:
        assert path == "/networks?filters={0}", path
        self.calls += 1
        [asked] = json.loads(args[0])["name"]
        return [{"Name": n} for n in self.names if asked in n]


def test_network_for_asks_once_per_engine() -> None:
    without = NetworksOnly(["bridge-like", "host", "none"])
    assert [bk.network_for(without, r) for r in (None, "default", "host", "none")] == ["none", "none", "host", "none"]
    assert without.calls == 1
    with_bridge = NetworksOnly(["bridge", "host", "none"])
    assert bk.network_for(with_bridge, None) is None
    assert bk.network_for(with_bridge, "default") == "default"
    with pytest.raises(UserError, match="only default, none, host"):
        bk.network_for(with_bridge, "my-net")


# --- real solves ---------------------------------------------------------------------------


@pytest.fixture
def engine_tag(api: Any) -> Iterator[str]:
    """A repository name for this test; every image tagged with it is removed afterwards."""
    repository = f"compimg-bk-{uuid.uuid4().hex[:10]}"
    yield repository
    for image in api.images(name=repository):
        api.remove_image(image["Id"], force=True)


def solve_text(engine: Any, dockerfile: str, tmp_path: Path | None = None, files: list[str] | None = None,
               **options: Any) -> tuple[bk.SolveResult, bk.Progress]:
    progress = bk.Progress()
    options.setdefault("network", bk.network_for(engine, None))
    root = str(tmp_path) if tmp_path else "/nonexistent"
    with context_tar(root, files or [], [("Dockerfile", dockerfile)]) as context:
        result = bk.solve(engine, context, dockerfile="Dockerfile", on_status=progress.feed, **options)
    progress.finish()
    return result, progress


def all_lines(progress: bk.Progress) -> list[str]:
    return [line for lines in progress.lines.values() for line in lines]


@pytest.mark.engine
def test_solve_returns_the_image_id_every_tag_points_at(api: Any, engine: Any, engine_tag: str) -> None:
    tags = [f"{engine_tag}:one", f"{engine_tag}:two"]
    result, progress = solve_text(engine, "FROM busybox\nLABEL compimg.test=yes\nRUN echo built > /built\n",
                                  tags=tags)
    assert result.error is None and result.image_id and result.image_id.startswith("sha256:")
    assert [api.inspect_image(t)["Id"] for t in tags] == [result.image_id] * 2
    assert api.inspect_image(result.image_id)["Config"]["Labels"]["compimg.test"] == "yes"
    assert any(v.name == "[2/2] RUN echo built > /built" for v in progress.vertexes.values()), progress.vertexes


@pytest.mark.engine
def test_target_builds_that_stage_only(api: Any, engine: Any, engine_tag: str) -> None:
    dockerfile = ("FROM busybox AS first\nLABEL which=first\nRUN echo in-first\n"
                  "FROM busybox AS second\nLABEL which=second\nRUN echo in-second\n")
    result, progress = solve_text(engine, dockerfile, tags=[f"{engine_tag}:t"], target="first", no_cache=True)
    assert result.image_id
    assert api.inspect_image(result.image_id)["Config"]["Labels"]["which"] == "first"
    assert all(bk.parse_name(v.name).stage in (None, "internal", "first") for v in progress.vertexes.values())
    assert "in-first" in all_lines(progress) and "in-second" not in all_lines(progress)


@pytest.mark.engine
def test_failing_run_gives_the_error_the_vertex_and_its_output(api: Any, engine: Any, engine_tag: str) -> None:
    dockerfile = "FROM busybox AS build\nRUN echo ok\nRUN echo before && echo on-stderr >&2 && exit 3\n"
    result, progress = solve_text(engine, dockerfile, tags=[f"{engine_tag}:t"], no_cache=True)
    assert result.image_id is None
    assert result.error and "exit code: 3" in result.error
    [failed] = progress.failed()
    # a single stage is not named in vertex names, even with `AS build`
    assert failed.name == "[3/3] RUN echo before && echo on-stderr >&2 && exit 3"
    assert sorted(progress.lines[failed.digest]) == ["before", "on-stderr"]  # two pipes: either order
    assert api.images(name=engine_tag) == []


@pytest.mark.engine
@pytest.mark.parametrize(("dockerfile", "options", "text"), [
    ("FROM busybox\nFOO bar\n", {}, "dockerfile parse error line 2: unknown instruction: FOO"),
    ("FROM busybox AS a\n", {"target": "nope"}, "target stage nope could not be found"),
])
def test_frontend_errors_come_in_the_stream_as_one_error(api: Any, engine: Any, dockerfile: str,
                                                         options: dict[str, Any], text: str) -> None:
    # On dockerd 20.10 these are not HTTP errors: the request is accepted, the frontend fails.
    result, _ = solve_text(engine, dockerfile, **options)
    assert result.image_id is None and result.error is not None
    assert text in result.error and "\n" not in result.error


@pytest.mark.engine
def test_a_refused_request_is_one_engine_error(api: Any, engine: Any) -> None:
    with pytest.raises(BuildRejected) as caught:
        solve_text(engine, "FROM busybox\n", network="my-network")
    assert caught.value.status_code == 500
    assert caught.value.engine_message == 'network mode "my-network" not supported by buildkit'
    assert str(caught.value) == 'the engine refused the build: network mode "my-network" not supported by buildkit'


def run_until_sleeping(engine: Any, marker: str, build_id: str, when_sleeping: Any) -> tuple[float, float]:
    """Solve a `RUN sleep 30`; call `when_sleeping()` once the step's process exists.
    Returns (time the callback ran, time solve ended)."""
    dockerfile = f"FROM busybox\nRUN sh -c 'sleep 30; echo {marker}'\n"
    progress = bk.Progress()
    moments: dict[str, float] = {}

    def on_status(status: bk.StatusResponse) -> None:
        for event in progress.feed(status):
            if event.kind == "start" and "sleep 30" in event.name and "called" not in moments:
                for _ in range(50):
                    if processes_with(marker):
                        break
                    time.sleep(0.1)
                moments["called"] = time.monotonic()
                when_sleeping()

    try:
        with context_tar("/nonexistent", [], [("Dockerfile", dockerfile)]) as context:
            result = bk.solve(engine, context, dockerfile="Dockerfile", no_cache=True, build_id=build_id,
                              network=bk.network_for(engine, None), on_status=on_status)
        assert result.image_id is None and result.error == "context canceled"
    finally:
        moments["ended"] = time.monotonic()
    return moments["called"], moments["ended"]


def containers_with(api: Any, marker: str) -> list[str]:
    """Engine containers whose command holds `marker` (only this test's: others may run)."""
    return [c["Id"] for c in api.containers(all=True) if marker in str(c.get("Command"))]


def wait_gone(marker: str, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_with(marker)


@pytest.mark.engine
def test_cancel_ends_a_running_solve_quickly(api: Any, engine: Any) -> None:
    marker = f"compimg-bk-{uuid.uuid4().hex[:10]}"
    build_id = f"compimg-bk-{uuid.uuid4().hex}"
    called, ended = run_until_sleeping(
        engine, marker, build_id, lambda: threading.Thread(target=bk.cancel, args=(engine, build_id)).start())
    assert ended - called < 5
    assert wait_gone(marker) == []
    assert containers_with(api, marker) == []


@pytest.mark.engine
def test_interrupting_the_stream_cancels_the_solve(api: Any, engine: Any) -> None:
    marker = f"compimg-bk-{uuid.uuid4().hex[:10]}"

    def interrupt() -> None:
        assert processes_with(marker), "the RUN step never showed as a process"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_until_sleeping(engine, marker, f"compimg-bk-{uuid.uuid4().hex}", interrupt)
    assert wait_gone(marker) == []  # the closed connection cancelled the solve
    assert containers_with(api, marker) == []


@pytest.mark.engine
def test_network_for_this_engine_and_build_args(api: Any, engine: Any, engine_tag: str) -> None:
    has_bridge = any(n["Name"] == "bridge" for n in api.networks())
    assert bk.network_for(engine, None) == (None if has_bridge else "none")
    dockerfile = "FROM busybox\nARG GREETING\nRUN echo \"greeting=$GREETING\"\n"
    result, progress = solve_text(engine, dockerfile, tags=[f"{engine_tag}:t"], no_cache=True,
                                  build_args={"GREETING": "hello there"})
    assert result.error is None and result.image_id
    assert "greeting=hello there" in all_lines(progress)


@pytest.mark.engine
def test_context_with_symlink_empty_dir_and_long_name(api: Any, engine: Any, engine_tag: str, tmp_path: Path) -> None:
    files = make_context(tmp_path)
    dockerfile = ("FROM busybox\nCOPY ctx/ /c/\n"
                  f"RUN readlink /c/link && cat /c/link /c/{LONG} && test -d /c/empty && stat -c %a /c/run.sh"
                  " && cat /c/Dockerfile && ls /c | wc -l\n")
    with context_tar(str(tmp_path), files, [("Dockerfile", dockerfile)], prefix="ctx/") as context:
        progress = bk.Progress()
        result = bk.solve(engine, context, dockerfile="Dockerfile", tags=[f"{engine_tag}:t"], no_cache=True,
                          network=bk.network_for(engine, None), on_status=progress.feed)
    assert result.error is None, result.error
    assert all_lines(progress) == ["target.txt", "target", "long", "751",
                                   "the user's own, replaced by the extra file", "6"]


@pytest.mark.engine
def test_without_a_prefix_the_dockerfile_and_dockerignore_are_in_the_context(api: Any, engine: Any, engine_tag: str,
                                                                            tmp_path: Path) -> None:
    # Documented in context_tar: a tar context gets no .dockerignore treatment on this engine.
    (tmp_path / "ignored.txt").write_text("x\n")
    dockerfile = "FROM busybox\nCOPY . /c/\nRUN ls -A /c\n"
    with context_tar(str(tmp_path), ["ignored.txt"], [("Dockerfile", dockerfile),
                                                          (".dockerignore", "ignored.txt\nDockerfile\n")]) as tar:
        progress = bk.Progress()
        result = bk.solve(engine, tar, dockerfile="Dockerfile", tags=[f"{engine_tag}:t"], no_cache=True,
                          network=bk.network_for(engine, None), on_status=progress.feed)
    assert result.error is None
    assert all_lines(progress) == [".dockerignore", "Dockerfile", "ignored.txt"]


@pytest.mark.engine
def test_a_long_first_member_is_not_an_archive_to_the_engine(api: Any, engine: Any) -> None:
    # Why context_tar puts a short name first: the engine sniffs only 1024 bytes.
    buffer = io.BytesIO()
    with tarfile.open(mode="w", fileobj=buffer, format=tarfile.GNU_FORMAT) as archive:
        for name, data in [("x" * 150, b"x"), ("Dockerfile", b"FROM busybox\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    result = bk.solve(engine, buffer, dockerfile="Dockerfile", network=bk.network_for(engine, None))
    assert result.error and "unknown instruction: ././@LONGLINK" in result.error


def test_a_failed_run_whose_last_status_was_lost_is_still_named_by_its_command() -> None:
    """On a busy engine the failed vertex's final status can miss the stream; the executor's
    message still names the command, so the error is at the user's RUN line."""
    from invoke_compimg.builders.solve_view import SolveView
    from invoke_compimg.dockerfile.lowering import multi_stage
    from invoke_compimg.dockerfile.parse import parse_text
    from invoke_compimg.progress import QuietReporter

    graph = parse_text("NAME build\nFROM busybox\nRUN echo ok\nRUN  echo out-1 && exit 4\n")
    view = SolveView("build", multi_stage(graph), QuietReporter(io.StringIO(), io.StringIO()))
    error = view.failure("executor failed running [/bin/sh -c echo out-1 && exit 4]: exit code: 4", "Dockerfile", 1)
    assert str(error) == ("Dockerfile:4: stage 'build' failed at RUN echo out-1 && exit 4: "
                          "executor failed running [/bin/sh -c echo out-1 && exit 4]: exit code: 4")
