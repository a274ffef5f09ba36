"""What a BuildKit solve shows, from its progress (no engine: statuses as BuildKit sends them):
a stage built inside the solve is shown finished when its last step is, a failure belongs to
the stage whose step failed, and a solve waiting for another build says so once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import FakeReporter

from invoke_compimg.builders import solve_view
from invoke_compimg.builders.solve_view import SolveView
from invoke_compimg.dockerfile.lowering import multi_stage
from invoke_compimg.dockerfile.parse import parse_text
from invoke_compimg.engine.buildkit.wire import StatusResponse, Vertex

DOCKERFILE = """\
NAME build
FROM busybox
RUN echo hi > /x

NAME run
FROM busybox
COPY build:/x /x
RUN sleep 1
"""
T = 1_700_000_000.0  # a moment, in seconds since the epoch, as BuildKit's timestamps are


def view(reporter: Any) -> SolveView:
    graph = parse_text(DOCKERFILE)
    return SolveView("run", multi_stage(graph, graph.needs("run")), reporter)


def status(*vertexes: Vertex) -> StatusResponse:
    return StatusResponse(vertexes=vertexes)


BUILD_FROM = Vertex("sha256:b1", (), "[build 1/2] FROM docker.io/library/busybox", cached=True, started=T, completed=T)
RUN_FROM = Vertex("sha256:r1", (), "[run 1/3] FROM docker.io/library/busybox", cached=True, started=T, completed=T)
BUILD_RUN = "[build 2/2] RUN echo hi > /x"
RUN_COPY = "[run 2/3] COPY --from=build /x /x"
RUN_SLEEP = "[run 3/3] RUN sleep 1"


def finished(reporter: FakeReporter) -> list[tuple[str, ...]]:
    return [e for e in reporter.events if e[0] == "stage_finished"]


def test_a_stage_built_inside_the_solve_is_finished_when_its_last_step_is() -> None:
    reporter = FakeReporter()
    v = view(reporter)
    v.feed(status(BUILD_FROM, RUN_FROM, Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN, started=T)))
    assert finished(reporter) == []  # its last step runs: not finished
    v.feed(status(Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN, started=T, completed=T + 0.5)))
    assert finished(reporter) == [("stage_finished", "build", "", "0.5", "built")]
    v.feed(status(Vertex("sha256:r2", ("sha256:r1", "sha256:b2"), RUN_COPY, started=T + 1, completed=T + 1.1),
                  Vertex("sha256:r3", ("sha256:r2",), RUN_SLEEP, started=T + 1.1)))
    steps = [e for e in reporter.events if e[0] == "step"]
    assert reporter.events.index(finished(reporter)[0]) < reporter.events.index(steps[-1])  # before run's steps
    v.feed(status(Vertex("sha256:r3", ("sha256:r2",), RUN_SLEEP, started=T + 1.1, completed=T + 2.1)))
    v.finish()
    assert v.conclude() == {"build": "built"}
    # The target is the run's to finish (it has an image to wait for); build is shown once.
    assert [e[1] for e in finished(reporter)] == ["build"]


def test_a_stage_whose_steps_all_came_from_the_cache_is_cached() -> None:
    reporter = FakeReporter()
    v = view(reporter)
    v.feed(status(BUILD_FROM, RUN_FROM, Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN, cached=True, started=T,
                                               completed=T)))
    v.finish()
    assert v.conclude() == {"build": "cached"}
    assert finished(reporter) == [("stage_finished", "build", "", "0.0", "cached")]


def test_a_failure_belongs_to_the_stage_whose_step_failed() -> None:
    reporter = FakeReporter()
    v = view(reporter)
    v.feed(status(BUILD_FROM, RUN_FROM, Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN, started=T, completed=T + 1,
                                               error="process \"/bin/sh -c echo hi > /x\" exit code: 2")))
    v.finish()
    error = v.failure("failed to solve: exit code: 2", "/p/Dockerfile", 5)
    assert error.stage == "build" and str(error).startswith("/p/Dockerfile:3: stage 'build' failed at RUN echo hi")
    assert finished(reporter) == []  # a failed stage is not finished


def test_a_solve_waiting_for_another_build_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solve_view, "WAIT_NOTICE", 0.3)
    reporter = FakeReporter()
    v = view(reporter)
    # The context is in and the first steps are cached; the next is ready and not started:
    # another build runs it for both, and BuildKit shows it only there.
    context = Vertex("sha256:c", (), "[internal] load build context", started=T, completed=T)
    v.feed(status(context, BUILD_FROM, RUN_FROM, Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN),
                  Vertex("sha256:r2", ("sha256:r1", "sha256:b2"), RUN_COPY)))
    time.sleep(2.0)
    notes = [e for e in reporter.events if e[0] == "note"]
    assert notes == [("note", "waiting for another build on this engine: it runs the same steps (from "
                              f"{BUILD_RUN} on), which BuildKit runs once for both and shows only there", "build")]
    # The other build's steps done, this solve goes on to its export; they never started here.
    v.feed(status(Vertex("sha256:e", (), "exporting to image", started=T + 9, completed=T + 9)))
    v.finish()
    assert v.conclude() == {"build": "shared"}
    assert [e for e in reporter.events if e[0] == "note"] == notes  # once


def test_a_step_running_without_output_is_not_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solve_view, "WAIT_NOTICE", 0.3)
    reporter = FakeReporter()
    v = view(reporter)
    v.feed(status(BUILD_FROM, RUN_FROM, Vertex("sha256:b2", ("sha256:b1",), BUILD_RUN, started=T),
                  Vertex("sha256:r2", ("sha256:r1", "sha256:b2"), RUN_COPY)))
    time.sleep(1.5)
    v.finish()
    assert [e for e in reporter.events if e[0] == "note"] == []


# --- failures the frontend reports without a location (as this engine's BuildKit sends them) ---

def failure_of(dockerfile: str, error: str, *vertexes: Vertex, platforms: tuple[str, ...] = ()) -> str:
    graph = parse_text(dockerfile)
    v = SolveView(graph.final.name, multi_stage(graph, graph.needs(graph.final.name)), FakeReporter(),
                  platforms=platforms)
    v.feed(status(*vertexes))
    v.finish()
    return str(v.failure(error, "/p/Dockerfile", 1))


LLB = "failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
METADATA = "[internal] load metadata for docker.io/library/busybox:latest"
NO_REGISTRY = ('failed to do request: Head "https://registry-1.docker.io/v2/library/busybox/manifests/latest": '
               "dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host")


@pytest.mark.parametrize(("instruction", "message"), [
    ("EXPOSE abc", "Invalid containerPort: abc"),
    ("EXPOSE 80/tcpp", "Invalid proto: tcpp"),
])
def test_a_frontend_error_is_the_line_of_the_instruction_it_quotes(instruction: str, message: str) -> None:
    text = failure_of(f"FROM busybox\n{instruction}\n", LLB + message)
    assert text == f"/p/Dockerfile:2: stage 'stage-0' failed at {instruction}: {message}"
    # two instructions with that value: which one is not known, so neither is named
    text = failure_of(f"FROM busybox\n{instruction}\n{instruction} 22\n", LLB + message)
    assert text == f"/p/Dockerfile:1: stage 'stage-0' failed: {message}"


def test_an_add_whose_url_cannot_be_fetched_is_its_line() -> None:
    fetch = 'Get "http://example.invalid/x": dial tcp: lookup example.invalid on 10.255.255.53:53: no such host'
    text = failure_of("NAME app\nFROM busybox\nRUN true\nADD http://example.invalid/x /x\n",
                      "failed to load cache key: " + fetch,
                      Vertex("sha256:f", (), "[app 1/3] FROM docker.io/library/busybox", cached=True),
                      Vertex("sha256:u", (), "http://example.invalid/x", started=T, completed=T, error=fetch),
                      Vertex("sha256:a", ("sha256:f", "sha256:u"), "[app 3/3] ADD http://example.invalid/x /x"))
    assert text == ("/p/Dockerfile:4: stage 'app' failed at ADD http://example.invalid/x /x: "
                    f"failed to load cache key: {fetch}")


def test_copy_link_on_an_older_frontend_says_which_dockerfile_has_it() -> None:
    # (the line of the file sent: ours drops the blank line)
    text = failure_of("FROM busybox\n\nCOPY --link a /a\n", LLB + "dockerfile parse error line 2: Unknown flag: link")
    assert text == ("/p/Dockerfile:3: COPY --link needs Dockerfile 1.4 (BuildKit 0.10+), and the Dockerfile frontend "
                    "built into this BuildKit is older (Docker 20.10's is 1.2): drop --link, or add a "
                    "'# syntax=docker/dockerfile:1.4' line at the top of the file where the engine can pull that image")
    # any other unknown flag: the frontend's words, at the user's line
    text = failure_of("FROM busybox\nHEALTHCHECK --start-interval=1s CMD true\n",
                      LLB + "dockerfile parse error line 2: Unknown flag: start-interval")
    assert text == ("/p/Dockerfile:2: stage 'stage-0' failed at HEALTHCHECK --start-interval=1s CMD true: "
                    "Unknown flag: start-interval; fix that line")


def test_a_from_platform_whose_image_is_not_here_says_so_as_the_platform_flag_does() -> None:
    metadata = Vertex("sha256:m", (), METADATA, started=T, completed=T, error=NO_REGISTRY)
    advice = ("no linux/arm64 image of it is on the engine, and BuildKit could not fetch one; pull it for that "
              "platform, or run this stage on the build platform (FROM --platform=$BUILDPLATFORM ...)")
    written = failure_of("FROM --platform=linux/arm64 busybox\nRUN true\n", LLB + NO_REGISTRY, metadata)
    assert written == (f"/p/Dockerfile:1: stage 'stage-0' failed at FROM --platform=linux/arm64 busybox: "
                       f"{NO_REGISTRY}; {advice}")
    flag = failure_of("FROM busybox\nRUN true\n", LLB + NO_REGISTRY, metadata, platforms=("linux/arm64",))
    assert flag == f"/p/Dockerfile:1: stage 'stage-0' failed at FROM busybox: {NO_REGISTRY}; {advice}"
    # the build platform's own image: the name or the tag is wrong
    native = failure_of("FROM --platform=$BUILDPLATFORM busybox\n", LLB + NO_REGISTRY, metadata,
                        platforms=("linux/arm64",))
    assert native.endswith(f"{NO_REGISTRY}; check the image name and tag")


# --- a solve for several platforms (the names this engine's BuildKit gave examples/cross-go's) ---

CROSS_GO = """\
NAME build
FROM --platform=$BUILDPLATFORM golang:1.19
ARG TARGETOS TARGETARCH
COPY . .
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 go build -o /out/app .

NAME run
FROM scratch
COPY build:/out/app /app
ENTRYPOINT ["/app"]
"""
GO_BUILD = "RUN GOOS=linux GOARCH={} CGO_ENABLED=0 go build -o /out/app ."
CROSS = {  # digest -> (name, inputs), every vertex as the first status announces them
    "sha256:from": ("[linux/amd64 build 1/3] FROM docker.io/library/golang:1.19", ()),
    "sha256:ctx": ("[internal] load build context", ()),
    "sha256:copy": ("[linux/amd64 build 2/3] COPY . .", ("sha256:from", "sha256:ctx")),
    "sha256:amd": ("[linux/amd64 build 3/3] " + GO_BUILD.format("amd64"), ("sha256:copy",)),
    "sha256:amd-app": ("[linux/amd64 run 1/1] COPY --from=build /out/app /app", ("sha256:amd",)),
    "sha256:arm": ("[linux/amd64 build 3/3] " + GO_BUILD.format("arm64"), ("sha256:copy",)),
    "sha256:arm-app": ("[linux/arm64 run 1/1] COPY --from=build /out/app /app", ("sha256:arm",)),
}


def cross(digest: str, **times: Any) -> Vertex:
    name, inputs = CROSS[digest]
    return Vertex(digest, inputs, name, **times)


def test_a_step_of_each_platform_is_named_with_its_platform_and_the_stage_ends_after_all() -> None:
    graph = parse_text(CROSS_GO)
    reporter = FakeReporter()
    v = SolveView("run", multi_stage(graph, graph.needs("run")), reporter, platforms=("linux/amd64", "linux/arm64"))
    v.feed(status(Vertex("sha256:meta", (), "[linux/amd64 internal] load metadata for docker.io/library/golang:1.19",
                         started=T, completed=T), *(cross(d) for d in CROSS)))
    v.feed(status(cross("sha256:from", started=T, completed=T, cached=True),
                  cross("sha256:ctx", started=T, completed=T), cross("sha256:copy", started=T, completed=T + 0.1)))
    # both platforms' go build run on linux/amd64 (the build platform); each is named for its own
    v.feed(status(cross("sha256:amd", started=T + 0.1), cross("sha256:arm", started=T + 0.1)))
    v.feed(status(cross("sha256:amd", started=T + 0.1, completed=T + 1.6)))
    assert finished(reporter) == []  # arm64's go build still runs
    v.feed(status(cross("sha256:amd-app", started=T + 1.6, completed=T + 1.7),
                  cross("sha256:arm", started=T + 0.1, completed=T + 18.8)))
    assert [(e[1], e[4]) for e in finished(reporter)] == [("build", "built")]  # now, with both done
    v.feed(status(cross("sha256:arm-app", started=T + 18.8, completed=T + 18.9)))
    v.finish()
    go = "RUN GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 go build -o /out/app ."
    assert [e for e in reporter.events if e[0] == "step"] == [
        ("step", "build", "[build 1/3] FROM --platform=$BUILDPLATFORM golang:1.19"),  # shared: no platform
        ("step", "build", "[build 2/3] COPY . ."),
        ("step", "build", f"[linux/amd64 build 3/3] {go}"),
        ("step", "build", f"[linux/arm64 build 3/3] {go}"),
        ("step", "run", "[linux/amd64 run 1/1] COPY build:/out/app /app"),
        ("step", "run", "[linux/arm64 run 1/1] COPY build:/out/app /app"),
    ]
    done = [e[2] for e in reporter.events[:reporter.events.index(finished(reporter)[0])] if e[0] == "step_done"]
    assert f"[linux/arm64 build 3/3] {go}" in done and f"[linux/amd64 build 3/3] {go}" in done


def test_a_step_the_platforms_share_is_not_named_for_the_one_announced_first() -> None:
    """BuildKit announces a platform's vertexes as it loads that platform: the shared FROM can
    start while only arm64's chain is known, and what it feeds then names arm64 alone."""
    graph = parse_text(CROSS_GO)
    reporter = FakeReporter()
    v = SolveView("run", multi_stage(graph, graph.needs("run")), reporter, platforms=("linux/amd64", "linux/arm64"))
    v.feed(status(*(cross(d) for d in ("sha256:from", "sha256:ctx", "sha256:copy", "sha256:arm", "sha256:arm-app"))))
    v.feed(status(cross("sha256:from", started=T), cross("sha256:arm", started=T + 0.1)))
    v.feed(status(*(cross(d) for d in ("sha256:amd", "sha256:amd-app"))))
    v.feed(status(cross("sha256:copy", started=T + 0.1), cross("sha256:amd", started=T + 0.2)))
    go = "RUN GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 go build -o /out/app ."
    assert [e[2] for e in reporter.events if e[0] == "step"] == [
        "[build 1/3] FROM --platform=$BUILDPLATFORM golang:1.19",
        f"[linux/arm64 build 3/3] {go}",
        "[build 2/3] COPY . .",
        f"[linux/amd64 build 3/3] {go}",
    ]


@pytest.mark.parametrize(("dockerfile", "shared"), [
    ("FROM --platform=$BUILDPLATFORM golang\nARG TARGETOS TARGETARCH\nCOPY . .\nRUN go build\n", 2),
    ("FROM --platform=${BUILDPLATFORM} golang\nRUN go vet\nCOPY . .\nARG TARGETARCH\nRUN go build\n", 3),
    ("FROM --platform=$BUILDPLATFORM golang\nCOPY $TARGETARCH/ .\n", 1),
    ("FROM --platform=$BUILDPLATFORM golang\nENV GOARCH=$TARGETARCH\nRUN go build\n", 1),
    ("FROM --platform=$BUILDPLATFORM golang\nRUN --mount=from=base,target=/b true\n", 1),
    ("FROM golang\nCOPY . .\n", 0),  # each platform's own base image
    ("FROM --platform=linux/amd64 golang\nCOPY . .\n", 0),  # (not told apart from a per-platform one)
])
def test_the_steps_known_to_be_shared_by_every_platform(dockerfile: str, shared: int) -> None:
    from invoke_compimg.builders.solve_view import shared_steps

    graph = parse_text(dockerfile)
    lowered = multi_stage(graph, graph.needs(graph.final.name))
    assert shared_steps(lowered.stages[graph.final.name]) == shared


def test_a_stage_whose_platforms_come_from_the_cache_in_one_status_ends_after_both() -> None:
    graph = parse_text(CROSS_GO)
    reporter = FakeReporter()
    v = SolveView("run", multi_stage(graph, graph.needs("run")), reporter, platforms=("linux/amd64", "linux/arm64"))
    v.feed(status(*(cross(d) for d in CROSS)))
    v.feed(status(*(cross(d, cached=True, started=T, completed=T) for d in CROSS)))
    events = reporter.events
    last_steps = [i for i, e in enumerate(events) if e[0] == "step_done" and "build 3/3" in e[2]]
    assert len(last_steps) == 2 and events.index(finished(reporter)[0]) > last_steps[-1]
