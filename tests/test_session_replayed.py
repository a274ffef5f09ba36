"""The BuildKit builder's session path without an engine (builders/buildkit.py through
engine/control): each solve through `Control.Solve` with a session that the daemon reads the
Dockerfile and the context from, its progress from `Control.Status`, its failures, Ctrl-C,
exports, secrets, and the retry of a lost session, replayed from what the real engine
answered (engine_scenarios: buildkit_errors, buildkit_session; fake_control serves the
recorded calls and calls the session back as the daemon did)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from engine_scenarios import failure, replayed
from fake_control import FILESEND, FILESYNC, SESSION, SOLVE
from fake_engine import FakeEngine, Request

from invoke_compimg.engine.control.client import Platform, Worker
from invoke_compimg.engine.control.proto import secrets_pb2
from invoke_compimg.errors import EngineError

FAILING_RUN = "RUN echo before-failure && echo to-stderr >&2 && exit 3"
NO_SESSION = "failed to read dockerfile: no active session for "


def solves(requests: list[Request]) -> list[dict[str, Any]]:
    """The SolveRequests the code sent, as JSON."""
    return [r.sent["json"] for r in requests if r.method == "GRPC" and r.path == SOLVE]


def read(requests: list[Request], directory: str) -> list[dict[str, Any]]:
    """What each FileSync of the daemon found in the session's dir `directory`."""
    return [r.sent for r in requests if r.method == "CALLBACK" and r.path == FILESYNC and r.sent["dir"] == directory]


def engine_said(fake: FakeEngine, index: int) -> str:
    """The details of the `index`th Solve error the real engine answered (its words)."""
    return [c.error["details"] for c in fake.calls if c.grpc == SOLVE and c.error][index]


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("session-errors")
    with replayed("buildkit_errors", folder) as (seen, fake):
        yield seen, fake, folder


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("session")
    with replayed("buildkit_session", folder) as (seen, fake):
        marks = seen.marks
        steps = {name: fake.log[marks[name]:marks[after]] for name, after in
                 [("output", "extract"), ("extract", "workers"), ("workers", "lost"), ("lost", "lost_twice"),
                  ("lost_twice", "end")]}
        yield seen, fake, steps


# --- what is sent ----------------------------------------------------------------------------

def test_one_solve_of_every_needed_stage_through_the_session(errors: Any) -> None:
    seen, fake, _ = errors
    first = solves(fake.log)[0]
    assert first["Frontend"] == "dockerfile.v0"
    assert first["FrontendAttrs"] == {"filename": "Dockerfile", "target": "run", "force-network-mode": "none"}
    failing = seen.failing
    assert failing[2].startswith("[build] #1 [build 1/2] FROM busybox")
    # The image goes to the engine's store under the stage's name.
    assert first["Exporter"] == "moby"
    assert first["ExporterAttrs"] == {"name": f"compimg/{fake.bound['project']}:run"}
    # The session the solve names is the one attached for it, with a key of its own folder.
    [attached] = [r for r in fake.requests("GRPC", "Control/Session$")][:1]
    assert first["Session"] == attached.sent["metadata"]["x-docker-expose-session-uuid"][0]
    assert attached.sent["metadata"]["x-docker-expose-session-name"] == ["compimg"]
    assert not fake.requests("POST", "/build$")  # no tar, no /build
    # The engine's own /session was asked first, and refused here (see fake_engine.refused_session).
    assert fake.session_refusals >= 1


def test_the_daemon_reads_the_dockerfile_from_the_session_as_sent(errors: Any) -> None:
    _, fake, _ = errors
    [dockerfile] = read(fake.log, "dockerfile")[:1]
    sent = dockerfile["files"]["Dockerfile"]
    assert sent == f"FROM busybox AS build\n{FAILING_RUN}\n\nFROM busybox AS run\nCOPY --from=build /x /x\n"
    assert "ctx" not in sent  # no folder of ours: the context is the user's folder itself
    assert dockerfile["listed"] == ["Dockerfile"]
    [context] = read(fake.log, "context")[:1]
    assert context["listed"] == []  # only .dockerignore was asked for, and the stages read nothing


def test_a_session_path_build_says_nothing_about_a_tar(errors: Any) -> None:
    seen, _, _ = errors
    assert not any("without a BuildKit session" in shown for _, _, shown in seen.values())


# --- failures ------------------------------------------------------------------------------

def test_a_failing_run_in_a_needed_stage_is_its_line(errors: Any) -> None:
    seen, fake, folder = errors
    text, shown = failure(seen, "failing")
    said = engine_said(fake, 0)
    assert said.endswith("exit code: 3")
    assert text == f"{folder}/failing/Dockerfile:3: stage 'build' failed at {FAILING_RUN}: {said}"
    lines = shown.splitlines()
    assert f"[build] #2 [build 2/2] {FAILING_RUN}" in lines  # BuildKit's `[build 2/2]`: the user's line
    assert {"[build] before-failure", "[build] to-stderr"} <= set(lines)  # its output, both streams


def test_a_frontend_error_is_mapped_to_the_users_line(errors: Any) -> None:
    seen, fake, folder = errors
    text, shown = failure(seen, "frontend")
    assert "dockerfile parse error line 2: " in engine_said(fake, 1)  # a line of the file sent
    assert text == (f"{folder}/frontend/Dockerfile:4: stage 'build' failed at HEALTHCHECK --start-interval=1s "
                    "CMD true: Unknown flag: start-interval; fix that line")
    assert shown == ""  # no step ran


def test_a_base_image_it_cannot_resolve_is_the_from_line(errors: Any) -> None:
    seen, fake, folder = errors
    text, _ = failure(seen, "missing")
    said = engine_said(fake, 2)
    cause = said.split("failed to create LLB definition: ", 1)[1]
    assert text == (f"{folder}/missing/Dockerfile:2: stage 'build' failed at FROM compimg-no-such-image:1: {cause}; "
                    "check the image name and tag")


def test_a_solve_the_daemon_refuses_keeps_its_words(errors: Any) -> None:
    seen, fake, folder = errors
    text, shown = failure(seen, "refused")
    assert solves(fake.log)[3]["FrontendAttrs"]["force-network-mode"] == "my-network"
    assert engine_said(fake, 3) == "failed to solve with frontend dockerfile.v0: invalid netmode my-network"
    assert text == f"{folder}/refused/Dockerfile:1: stage 'build' failed: invalid netmode my-network"
    assert shown == ""


def test_a_lost_engine_is_one_line(tmp_path: Path) -> None:
    def lose_it(fake: FakeEngine) -> None:
        fake.cut("GRPC", "Control/Status$", after=4)

    with replayed("buildkit_errors", tmp_path, arrange=lose_it) as (seen, fake):
        pass
    text, _ = failure(seen, "failing")
    assert text.startswith(f"{tmp_path}/failing/Dockerfile:5: stage 'run': lost the Docker engine at unix://")
    assert " during the solve (" in text and text.endswith("; check that it is running, then retry")
    # The next build connects again (one more POST /grpc) and goes on as recorded.
    assert len(fake.requests("POST", "/grpc$")) == 2
    text, _ = failure(seen, "frontend")
    assert text.endswith("fix that line")


# --- what only a session does ------------------------------------------------------------------

def test_output_writes_the_targets_files_and_makes_no_image(session: Any) -> None:
    seen, _, steps = session
    [solve] = solves(steps["output"])
    assert solve["Exporter"] == "local" and "ExporterAttrs" not in solve
    assert solve["FrontendAttrs"]["target"] == "dist"
    out = seen.dest / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["app", "link", "sub", "sub/greeting",
                                                                           "sub/token-size"]
    assert (out / "app").read_text() == f"v1 {seen.unique}\n"
    assert (out / "sub" / "greeting").read_text() == "hello\n"  # the build arg
    assert (out / "sub" / "token-size").read_text() == "7\n"  # the secret, read when asked
    assert os.readlink(out / "link") == "app"
    [export] = [r for r in steps["output"] if r.method == "CALLBACK" and r.path == FILESEND]
    assert export.sent["requested"] == ["app", "sub/greeting", "sub/token-size"]
    # the build stage ran inside dist's solve: a row of its own, no image
    assert [(r.stage, r.outcome, r.image_id, r.inside) for r in seen.output.rows] == [
        ("build", "built", "", "dist"), ("dist", "exported", "", "")]
    assert seen.output.ids == {"dist": ""}
    assert seen.output.out.splitlines()[-1] == f"[dist] wrote {out}"


def test_build_args_secrets_and_agents_reach_the_daemon_only_as_asked(session: Any) -> None:
    seen, _, steps = session
    [solve] = solves(steps["output"])
    assert solve["FrontendAttrs"]["build-arg:GREETING"] == "hello"
    assert "Entitlements" not in solve
    [asked] = [r for r in steps["output"] if r.method == "CALLBACK" and r.path.endswith("/GetSecret")]
    assert [secrets_pb2.GetSecretResponse.FromString(a).data for a in asked.sent["answers"]] == [b"s3cret\n"]
    assert not any("s3cret" in str(solve) for solve in solves(steps["output"]))  # never in a request
    # RUN --mount=type=ssh: the daemon checks the agent (our session connects to its socket).
    [checked] = [r for r in steps["output"] if r.method == "CALLBACK" and r.path.endswith("/CheckAgent")]
    assert checked.sent["error"] is None and checked.sent["answers"] == [b""]
    assert "[build] #4 [build 4/4] RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\"" in seen.output.out.splitlines()


def test_only_the_files_a_stage_reads_are_listed(session: Any) -> None:
    seen, _, steps = session
    listed = [found["listed"] for found in read(steps["output"], "context")]
    assert listed == [[], ["src.txt"]]  # .dockerignore (there is none), then what COPY reads
    [src] = [found for found in read(steps["output"], "context") if found["files"]]
    assert src["files"] == {"src.txt": f"v1 {seen.unique}\n"}
    assert dict(src["metadata"])["followpaths"] == "src.txt"


def test_extract_copies_out_through_a_local_export(session: Any) -> None:
    seen, _, steps = session
    found, error = seen.extract.found
    assert error is None and found.names == ["out"] and found.files == 6 and found.skipped == []
    out = seen.dest / "extracted" / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["app", "link", "sub", "sub/greeting",
                                                                           "sub/token-size"]
    assert (out / "app").read_text() == f"v1 {seen.unique}\n"
    extractions = solves(steps["extract"])[1:]  # after the stage's own build
    assert [(s["Exporter"], s["FrontendAttrs"]["target"]) for s in extractions] == [("local", "stage-0")] * 2
    assert all("ExporterAttrs" not in s for s in extractions)  # no image is made
    lines = seen.extract.out.splitlines()
    assert f"copying build:/out into {seen.dest / 'extracted'}" in lines


def test_extract_of_a_path_the_image_lacks_is_the_users_line(session: Any) -> None:
    seen, fake, _ = session
    _, error = seen.extract.missing
    assert str(error) == (f"{seen.project.dockerfile}:1: '/nope' does not exist in stage 'build'; check the path "
                          "with `compimg.shell build`")
    assert engine_said(fake, 0) == 'failed to compute cache key: "/nope" not found: not found'  # BuildKit's words
    assert not (seen.dest / "none").exists() or not any((seen.dest / "none").iterdir())


def test_extract_reads_exactly_the_built_image_by_its_inputs_record(session: Any) -> None:
    _, _, steps = session
    # The build's solve stores the image under the record of its inputs, as the stage's image
    # (the image that solve made: no tag request after it)
    [build] = [s for s in solves(steps["extract"]) if s.get("Exporter") == "moby"]
    [record] = [name for name in build["ExporterAttrs"]["name"].split(",") if "--I-" in name]
    assert not [r for r in steps["extract"] if r.method == "POST" and r.path.endswith("/tag")]
    assert not [r for r in steps["extract"] if r.method == "DELETE"]  # no temporary name to remove
    dockerfiles = [found["files"].get("Dockerfile") for found in read(steps["extract"], "dockerfile")][-2:]
    assert dockerfiles == [f'FROM scratch AS stage-0\nCOPY --from={record} "{path}" "{path}"\n'
                           for path in ("/out", "/nope")]


def test_the_workers(session: Any) -> None:
    seen, _, steps = session
    assert seen.workers == [Worker("moby", (Platform("linux", "amd64"), Platform("linux", "386")))]
    assert [r.path.rsplit("/", 1)[1] for r in steps["workers"]] == ["ListWorkers"]


def test_a_lost_session_is_sent_again_once(session: Any) -> None:
    seen, _, steps = session
    sent = solves(steps["lost"])
    attached = [r.sent["metadata"]["x-docker-expose-session-uuid"][0] for r in steps["lost"]
                if r.method == "GRPC" and r.path == SESSION]
    assert len(sent) == 2 and [s["Session"] for s in sent] == attached  # a new session for the second
    assert sent[0]["Ref"] != sent[1]["Ref"]
    first, *rest = seen.lost.out.splitlines()
    assert first == (f"warning: [build] BuildKit lost this build's context or session (failed to solve with frontend "
                     f"dockerfile.v0: {NO_SESSION}{attached[0]}: context deadline exceeded); sending it again, once")
    assert rest[-1].startswith("[build] built ")
    assert seen.lost.ids["build"].startswith("sha256:")


def test_a_session_lost_twice_is_the_line(session: Any) -> None:
    seen, _, steps = session
    assert len(solves(steps["lost_twice"])) == 2
    second = [r.sent["metadata"]["x-docker-expose-session-uuid"][0] for r in steps["lost_twice"]
              if r.method == "GRPC" and r.path == SESSION][1]
    error = seen.lost_twice.error
    assert isinstance(error, EngineError) and seen.lost_twice.ids is None
    assert str(error) == (f"{seen.project.dockerfile}:1: stage 'build' failed: {NO_SESSION}{second}: "
                          "context deadline exceeded")
    assert seen.lost_twice.out.splitlines()[0].startswith("warning: [build] BuildKit lost this build's context")


# --- on a BuildKit service (--buildkit-host) ---------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("service")
    with replayed("buildkit_service", folder) as (seen, fake):
        marks = seen.marks
        yield seen, {"output": fake.log[marks["output"]:marks["kept"]], "kept": fake.log[marks["kept"]:marks["end"]]}


def test_files_out_of_a_buildkit_service_with_a_secret(service: Any) -> None:
    seen, steps = service
    assert (seen.dest / "out.txt").read_text() == f"hello from the service {seen.unique}\nand a secret\n"
    [solve] = solves(steps["output"])
    assert solve["Exporter"] == "local" and solve["FrontendAttrs"]["target"] == "artifact"
    assert [(r.outcome, r.builder, r.inside) for r in seen.output.rows][-1] == ("exported", "buildkit", "")
    assert all(r.inside and not r.image_id for r in seen.output.rows[:-1])
    # A service has no image store: nothing is asked of the engine, only of the service.
    assert {r.method for r in steps["output"] + steps["kept"]} == {"GRPC", "CALLBACK"}


def test_a_build_on_a_service_that_keeps_nothing_says_so(service: Any) -> None:
    seen, steps = service
    [solve] = solves(steps["kept"])
    assert "Exporter" not in solve  # BuildKit's cache only
    assert seen.kept.out.splitlines()[0] == (f"warning: building on the BuildKit service at {seen.address} keeps "
                                             "nothing but its cache (it has no tag to push); add -o DIR, or --tag REF "
                                             "--push")
    assert [(r.outcome, r.inside) for r in seen.kept.rows][-1] == ("cached", "") and seen.kept.ids == {"artifact": ""}
    assert all(r.inside == "artifact" and not r.image_id for r in seen.kept.rows[:-1])
