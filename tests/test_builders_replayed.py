"""Both builders without an engine (builders/classic.py, builders/buildkit.py): what they plan
and send, how the engine's progress is shown, and every failure's one line, replayed from
what the real engine answered (engine_scenarios: classic_errors, and buildkit_errors_tar: BuildKit
on an engine that refuses `POST /grpc`, so solves go as a tar through `POST /build`; the
session path is tests/test_session_replayed.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from engine_scenarios import failure, replayed
from fake_engine import FakeEngine

FAILING_RUN = "RUN echo before-failure && echo to-stderr >&2 && exit 3"


def engine_said(fake: FakeEngine, path: str, index: int = 0) -> str:
    """The error the real engine answered to the `index`th request to `path` (its words)."""
    found = [e for e in fake.exchanges if e.path.endswith(path)][index]
    if found.chunks is None:
        return str(json.loads(found.body or "{}")["message"])
    messages = [json.loads(line) for chunk in found.chunks for line in chunk.splitlines() if line.strip()]
    return str(next(m["errorDetail"]["message"] for m in messages if "errorDetail" in m))


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("classic")
    with replayed("classic_errors", folder) as (seen, fake):
        yield seen, fake, folder


@pytest.fixture(scope="module")
def buildkit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("buildkit")
    with replayed("buildkit_errors_tar", folder) as (seen, fake):
        yield seen, fake, folder


# --- the classic builder --------------------------------------------------------------------

def test_classic_a_failing_run_is_the_users_line(classic: Any) -> None:
    seen, fake, folder = classic
    text, shown = failure(seen, "failing")
    assert text == (f"{folder}/failing/Dockerfile:3: stage 'build' failed at {FAILING_RUN}: "
                    f"{engine_said(fake, '/build')}")
    assert "returned a non-zero code: 3" in text
    lines = shown.splitlines()
    assert lines[:2] == ["[build] #1 [build 1/2] FROM busybox", "[build] #1 DONE"]
    assert lines[2] == f"[build] #2 [build 2/2] {FAILING_RUN}"
    assert {"[build] before-failure", "[build] to-stderr"} <= set(lines)  # its output, both streams


def test_classic_sends_the_stage_alone_with_only_its_files(classic: Any) -> None:
    _, fake, _ = classic
    sent = fake.requests("POST", "/build$")[0]
    assert sent.param("t").endswith(":build") and sent.param("dockerfile") == ".compimg.Dockerfile"
    assert sent.param("pull") == "False" and sent.param("rm") == "True" and sent.param("forcerm") == "True"
    # The single-stage Dockerfile, and a .dockerignore that keeps it out of the stage's files.
    assert sent.sent["tar"] == {".compimg.Dockerfile": f"FROM busybox\n{FAILING_RUN}\n",
                                ".dockerignore": ".dockerignore\n.compimg.Dockerfile\n"}


def test_classic_a_base_image_the_engine_cannot_pull_is_the_from_line(classic: Any) -> None:
    seen, fake, folder = classic
    text, shown = failure(seen, "missing")
    assert text == (f"{folder}/missing/Dockerfile:2: stage 'build' failed at FROM compimg-no-such-image:1: "
                    f"{engine_said(fake, '/build', 1)}")
    assert shown.splitlines() == ["[build] #1 [build 1/2] FROM compimg-no-such-image:1"]


def test_classic_a_refused_request_keeps_the_engines_words(classic: Any) -> None:
    seen, fake, folder = classic
    text, _ = failure(seen, "refused")
    said = engine_said(fake, "/build", 2)
    assert "unknown instruction: FROBNICATE" in said  # HTTP 400 from the engine's parser
    assert text == f"{folder}/refused/Dockerfile:1: stage 'build': {said}"


def test_classic_a_lost_engine_is_one_line(tmp_path: Path) -> None:
    with replayed("classic_errors", tmp_path, arrange=lambda fake: fake.cut("POST", "/build$", after=5)) as (seen, _):
        pass
    text, shown = failure(seen, "failing")
    assert text.startswith(f"{tmp_path}/failing/Dockerfile:1: stage 'build': lost the Docker engine at unix://")
    assert text.endswith("; check that it is running, then retry")
    assert "[build] #2 [build 2/2] " + FAILING_RUN in shown.splitlines()  # what came before the loss


# --- BuildKit without a session --------------------------------------------------------------

def test_buildkit_without_grpc_says_once_that_it_sends_a_tar(buildkit: Any) -> None:
    seen, fake, _ = buildkit
    [refused] = [e for e in fake.exchanges if e.path.endswith("/grpc")]
    assert refused.status == 404  # the engine's answer to a path it does not serve
    [line] = [line for line in seen.failing[2].splitlines() if line.startswith("warning:")]
    said = json.loads(refused.body or "{}").get("message")  # the engine's own words, not its JSON
    assert said
    assert line == (f"warning: building without a BuildKit session: the Docker engine does not serve POST /grpc (it "
                    f"answered 404 {said}); context files are sent as a tar, and "
                    "secrets, ssh mounts and --output are not available")
    assert len(fake.requests("POST", "/grpc$")) == 1  # asked once per engine
    assert not any("warning:" in shown for name, (_, _, shown) in seen.items() if name != "failing")


def test_buildkit_a_failing_run_in_a_needed_stage_is_its_line(buildkit: Any) -> None:
    seen, fake, folder = buildkit
    text, shown = failure(seen, "failing")
    said = engine_said(fake, "/build")
    cause = said.replace("failed to solve with frontend dockerfile.v0: ", "").replace("failed to solve: ", "")
    assert text == f"{folder}/failing/Dockerfile:3: stage 'build' failed at {FAILING_RUN}: {cause}"
    assert text.endswith("exit code: 3")
    lines = shown.splitlines()
    # BuildKit's `[build 2/2]` is the user's instruction, under its stage (not the target's)
    assert f"[build] #2 [build 2/2] {FAILING_RUN}" in lines
    assert {"[build] before-failure", "[build] to-stderr"} <= set(lines)


def test_buildkit_sends_every_needed_stage_in_one_solve(buildkit: Any) -> None:
    _, fake, _ = buildkit
    sent = fake.requests("POST", "/build$")[0]
    assert sent.param("target") == "run" and sent.param("version") == "2"
    assert sent.param("buildid").startswith("compimg-") and sent.param("buildargs") == "{}"
    dockerfile = sent.sent["tar"][".compimg.Dockerfile"]
    assert "FROM busybox AS build" in dockerfile and "FROM busybox AS run" in dockerfile
    assert "COPY --from=build /x /x" in dockerfile
    assert "ctx" in sent.sent["tar"]  # the context's folder, even with no file of it read


def test_buildkit_a_frontend_error_is_mapped_to_the_users_line(buildkit: Any) -> None:
    seen, fake, folder = buildkit
    text, _ = failure(seen, "frontend")
    said = engine_said(fake, "/build", 1)
    assert "line 2" in said  # the engine names a line of the file it was sent
    assert text == (f"{folder}/frontend/Dockerfile:4: stage 'build' failed at HEALTHCHECK --start-interval=1s "
                    "CMD true: Unknown flag: start-interval; fix that line")


def test_buildkit_a_base_image_it_cannot_resolve_is_the_from_line(buildkit: Any) -> None:
    seen, _, folder = buildkit
    text, _ = failure(seen, "missing")
    assert text.startswith(f"{folder}/missing/Dockerfile:2: stage 'build' failed at FROM compimg-no-such-image:1: ")
    assert text.endswith("; check the image name and tag")


def test_buildkit_a_refused_request_keeps_the_engines_words(buildkit: Any) -> None:
    seen, fake, folder = buildkit
    text, shown = failure(seen, "refused")
    said = engine_said(fake, "/build", 3)
    assert text == f"{folder}/refused/Dockerfile:1: stage 'build' failed: the engine refused the build: {said}"
    assert said == 'network mode "my-network" not supported by buildkit' and shown == ""


def test_buildkit_a_lost_engine_is_one_line(tmp_path: Path) -> None:
    with replayed("buildkit_errors_tar", tmp_path,
                  arrange=lambda fake: fake.cut("POST", "/build$", after=4)) as (seen, _):
        pass
    text, _ = failure(seen, "failing")
    assert text.startswith(f"{tmp_path}/failing/Dockerfile:5: stage 'run': lost the Docker engine at unix://")
    assert "(connection broken" in text and text.endswith("; check that it is running, then retry")
