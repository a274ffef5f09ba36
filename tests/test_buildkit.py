"""The BuildKit backend end to end (issue 10) on the real engine: choosing the builder, one
solve per target, progress, errors, external images, warm no-ops, Ctrl-C, BuildKit-only
features and fidelity against the engine's own `DOCKER_BUILDKIT=1 docker build`.

Pinned to BuildKit (INVOKE_COMPIMG_BUILDER=buildkit) except where a test says otherwise.
Solves are counted by wrapping `Control.solve` in-process: the wrapper calls the real
method, so the engine still does every build."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peers
import pytest
from conftest import COMPIMG, cli
from engine_helpers import (
    Builder,
    again_unless_pruned,
    build_cache_ids,
    config_of,
    image_listing,
    processes_with,
    run_image,
)

from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.engine import buildkit
from invoke_compimg.errors import EngineError, Interrupted

pytestmark = pytest.mark.engine
registry = peers.registry  # the suite's local registry (module fixture)

DOCKER_2010 = "/usr/bin/docker"  # Debian's 20.10 client: BuildKit without buildx
TASKS_PY = "from invoke import Collection\nimport invoke_compimg\n\nns = Collection()\n" \
           "ns.add_collection(invoke_compimg.collection())\n"


@pytest.fixture(autouse=True)
def _pin_buildkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_COMPIMG_BUILDER", "buildkit")


def table_rows(stdout: str) -> dict[str, tuple[float, str, str]]:
    """The end-of-build table: {stage: (seconds, how, builder)}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^stage\s+image\s+size\s+seconds\s+builder$", line))
    rows = {}
    for line in lines[start + 1:]:
        found = re.match(r"^(\S+)\s.*?(\d+\.\d\d)(?: \((\w+)\))?\s+(buildkit|classic)$", line)
        if not found:
            break
        rows[found[1]] = (float(found[2]), found[3] or "built", found[4])
    return rows


class SolveSpy:
    """Wraps `Control.solve` (the real one runs): the frontend attrs and cancel event of every
    solve, each sent through BuildKit's Control API with a session."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from invoke_compimg.engine.control import client as control_client

        self.calls: list[dict[str, Any]] = []
        real_solve = control_client.Control.solve

        def solve(control: Any, **kwargs: Any) -> Any:
            self.calls.append(kwargs)
            return real_solve(control, **kwargs)

        monkeypatch.setattr(control_client.Control, "solve", solve)

    @property
    def targets(self) -> list[str]:
        return [str(call["frontend_attrs"].get("target")) for call in self.calls]

    @property
    def cancelled(self) -> list[str]:
        return [str(call["frontend_attrs"].get("target")) for call in self.calls if call["cancel"].is_set()]

    def reset(self) -> None:
        self.calls.clear()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SolveSpy:
    return SolveSpy(monkeypatch)


def build(project: Any, target: str | None = None, **settings: Any) -> tuple[dict[str, str], str, Builder]:
    out = io.StringIO()
    builder = Builder(project, Settings(**settings), out=out, builder="buildkit")
    ids = builder.build(target)
    return ids, out.getvalue(), builder


@pytest.fixture
def cache_mounts(api: Any, unique: str) -> Iterator[None]:
    """Removes, after the test, the BuildKit cache mounts of RUN steps whose command holds
    the test's unique name (the engine keeps them in its build cache otherwise)."""
    yield
    records = api._result(api._get(api._url("/system/df")), json=True).get("BuildCache") or []
    for record in records:
        if record.get("Type") == "exec.cachemount" and unique in (record.get("Description") or ""):
            # the engine takes one value per filter
            api._post(api._url("/build/prune"), params={"filters": json.dumps({"id": [record["ID"]]})})


def wait_until(condition: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


# --- 1. choosing the builder --------------------------------------------------------------

SMALL = "NAME build\nFROM busybox\nRUN echo built > /b\nNAME run\nFROM busybox\nCOPY build:/b /b\n"


def test_builder_setting_flag_env_config_and_auto(make_project: Any) -> None:
    project = make_project(SMALL, {"tasks.py": TASKS_PY})
    unset = {"INVOKE_COMPIMG_BUILDER": None}

    def builder_of(result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 0, result.stderr
        return table_rows(result.stdout)["run"][2]

    # auto (the default) takes BuildKit on this Linux Docker engine
    assert builder_of(cli("compimg", ["build"], project.context, unset)) == "buildkit"
    assert builder_of(cli("compimg", ["build", "--builder", "auto"], project.context, unset)) == "buildkit"
    assert builder_of(cli("compimg", ["build", "--builder", "classic"], project.context, unset)) == "classic"
    assert builder_of(cli("compimg", ["build"], project.context, {"INVOKE_COMPIMG_BUILDER": "classic"})) == "classic"
    # the config key, under invoke; the flag wins over it
    (project.context / "invoke.yaml").write_text("compimg:\n  builder: classic\n")
    assert builder_of(cli("invoke", ["compimg.build"], project.context, unset)) == "classic"
    assert builder_of(cli("invoke", ["compimg.build", "--builder", "buildkit"], project.context, unset)) == "buildkit"
    (project.context / "invoke.yaml").write_text("compimg:\n  builder: buildkit\n")
    assert builder_of(cli("invoke", ["compimg.build"], project.context, unset)) == "buildkit"
    bad = cli("compimg", ["build", "--builder", "docker"], project.context, unset)
    assert bad.returncode == 1 and bad.stderr.strip() == "--builder 'docker': choose one of auto, buildkit, classic"


# --- 2. one solve per target --------------------------------------------------------------

CHAIN = """\
NAME a
FROM busybox
RUN echo a > /a
NAME b
FROM busybox
COPY a:/a /a
RUN echo b > /b
NAME c
FROM busybox
COPY b:/a b:/b /c/
"""


def test_build_sends_one_solve_for_its_target(make_project: Any, api: Any, unique: str, spy: SolveSpy) -> None:
    project = make_project(CHAIN)
    ids, _, _ = build(project)
    assert spy.targets == ["c"] and set(ids) == {"c"}
    assert run_image(api, ids["c"], ["cat", "/c/a", "/c/b"]) == (0, "a\nb\n")
    # a stage with a tag needs an image of its own: a solve of its own (the target's is separate)
    spy.reset()
    ids, _, _ = build(project, tags={"b": (f"{unique}:b",)}, no_cache=True)
    assert sorted(spy.targets) == ["b", "c"] and set(ids) == {"b", "c"}
    assert api.inspect_image(f"{unique}:b")["Id"] == ids["b"]
    assert run_image(api, f"{unique}:b", ["cat", "/b"]) == (0, "b\n")


def test_each_stage_a_task_needs_gets_its_own_solve(make_project: Any, monkeypatch: pytest.MonkeyPatch,
                                                    spy: SolveSpy, tmp_path: Path) -> None:
    from invoke import Config, Context, Executor

    import invoke_compimg
    from invoke_compimg.tasks.binding import forget_projects

    project = make_project(CHAIN)
    monkeypatch.setenv("INVOKE_COMPIMG_NO_CACHE", "true")  # every task really builds
    monkeypatch.setenv("INVOKE_COMPIMG_PROGRESS", "quiet")
    ns = invoke_compimg.collection(base=project.context)
    stages = ns.collections["stage"]
    assert [t.name for t in stages["c"].pre] == ["b"] and [t.name for t in stages["b"].pre] == ["a"]

    def fresh() -> None:  # each task as its own invocation would see it: no in-process memo
        forget_projects()
        spy.reset()

    fresh()
    Executor(ns, config=Config()).execute("stage.c")  # pre: stage.b, whose pre is stage.a
    assert spy.targets == ["a", "b", "c"]
    c = Context(Config())
    where = {"base": project.context}
    for operation, args, expected in [
        (invoke_compimg.build_stage, ("b",), ["b"]),
        (invoke_compimg.assemble, (), ["c"]),
        # the stage's solve, then a local export of the path (target stage-0 of its own file)
        (invoke_compimg.extract_artifact, ("b:/b", str(tmp_path / "out")), ["b", "stage-0"]),
        (invoke_compimg.build, (), ["c"]),
    ]:
        fresh()
        operation(c, *args, **where)
        assert spy.targets == expected, operation.__name__
    assert (tmp_path / "out/b").read_text() == "b\n"
    fresh()
    with open(os.devnull) as no_input:  # the shell's input: a real file descriptor, at its end
        monkeypatch.setattr(sys, "stdin", no_input)
        invoke_compimg.shell(c, "a", cmd="test -f /a", **where)
    assert spy.targets == ["a"]


def test_extract_api_name_stays_callable(make_project: Any, tmp_path: Path) -> None:
    from invoke import Config, Context

    import invoke_compimg

    project = make_project("NAME a\nFROM busybox\nRUN echo a > /a\n")
    c = Context(Config({"compimg": {"progress": "quiet"}}))
    invoke_compimg.extract_artifact(c, "a:/a", str(tmp_path / "one"), base=project.context)
    assert callable(invoke_compimg.extract), type(invoke_compimg.extract)
    invoke_compimg.extract(c, "a:/a", str(tmp_path / "two"), base=project.context)
    assert (tmp_path / "two/a").read_text() == "a\n"


# --- 3. progress ----------------------------------------------------------------------------

PROGRESS = """\
NAME build
FROM busybox
RUN printf 'half-'; sleep 0.3; printf 'line\\n'; echo second-line; : {unique}
RUN sleep 1.2 && mkdir /out && echo x > /out/x
NAME other
FROM busybox
RUN echo from-other > /o; : {unique}
NAME run
FROM busybox
COPY build:/out/x other:/o /d/
RUN echo {word}; : {unique}
"""


def test_progress_names_stages_and_the_table_times_them(make_project: Any, api: Any, unique: str) -> None:
    # (the unique name keeps the engine's cache from holding these steps already)
    project = make_project(PROGRESS.format(word="first", unique=unique))
    result = cli("compimg", ["build", "--progress", "plain"], project.context)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^\[build\] #\d+ \[build 2/3\] RUN printf 'half-'; sleep 0\.3", out, re.M), out
    assert re.search(r"^\[build\] #\d+ \[build 3/3\] RUN sleep 1\.2", out, re.M), out
    assert re.search(r"^\[run\] #\d+ \[run \d/4\] COPY build:/out/x other:/o /d/$", out, re.M), out
    # output lines whole (a line written in two pieces is one line) and prefixed with their stage
    assert "[build] half-line\n" in out and "[build] second-line\n" in out and "[run] first\n" in out
    done = [float(s) for s in re.findall(r"^\[build\] #\d+ DONE (\d+\.\d)s$", out, re.M)]
    assert done and max(done) >= 1.1, out
    rows = table_rows(out)
    assert set(rows) == {"build", "other", "run"} and {r[2] for r in rows.values()} == {"buildkit"}
    assert rows["build"][0] >= 1.4, rows  # per-stage seconds from the vertex times: 0.3 + 1.2
    assert rows["other"][0] < 1.0, rows
    # a change in the last stage only: the others' steps come from the cache
    cache = build_cache_ids(api)
    (project.context / "Dockerfile").write_text(PROGRESS.format(word="second", unique=unique))
    again = again_unless_pruned(api, cache, lambda: cli("compimg", ["build", "--progress", "plain"], project.context),
                                lambda found: bool(re.search(r"^\[build\] #\d+ CACHED$", found.stdout, re.M)))
    assert again.returncode == 0, again.stderr
    assert re.search(r"^\[build\] #\d+ CACHED$", again.stdout, re.M), again.stdout
    assert "[build] half-line" not in again.stdout and "[run] second\n" in again.stdout
    assert table_rows(again.stdout)["build"][0] < 1.0


# --- 4. errors ------------------------------------------------------------------------------

FAILING = """\
NAME build
FROM busybox
RUN mkdir /a && echo a > /a/x

NAME run
FROM busybox
ENV X=1
COPY build:/a/x f.txt /d/
RUN true
RUN echo out-1 && \\
    echo out-2 >&2 && \\
    exit 4
"""


def test_failing_run_quotes_the_users_line_after_a_seed_copy(make_project: Any) -> None:
    # The seed COPY lowers to two COPY lines: BuildKit calls the failing RUN step 5/5, the
    # user's stage has it as its fourth step, on line 10.
    project = make_project(FAILING, {"f.txt": "f\n"})
    result = cli("compimg", ["build", "--progress", "plain"], project.context)
    assert result.returncode == 1
    assert "[run 5/5] RUN echo out-1" in result.stdout
    error = result.stderr.strip()
    assert error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:10: stage 'run' failed at RUN echo out-1 && "
                            "echo out-2 >&2 && exit 4: ")
    assert error.endswith("exit code: 4")
    out = result.stdout
    assert out.index("[run] out-1") < out.index("[run] FAILED") and "[run] out-2\n" in out
    assert "exit code" not in out  # the error once: on stderr
    # quiet: the failed step's last output lines, then the error
    quiet = cli("compimg", ["build", "--progress", "quiet"], project.context)
    assert quiet.returncode == 1 and quiet.stdout == ""
    lines = quiet.stderr.splitlines()
    # (the step's stdout and stderr reach the engine on two pipes: either order)
    assert sorted(lines[:2]) == ["[run] out-1", "[run] out-2"] and lines[-1] == error


# A flag newer frontends take (so our parser does) and this engine's Dockerfile 1.2 does not.
HEALTHCHECK = "NAME build\nFROM busybox\n\nHEALTHCHECK --start-interval=1s CMD true\nRUN echo hi\n"


def test_frontend_parse_error_is_one_line(make_project: Any) -> None:
    project = make_project(HEALTHCHECK)
    result = cli("compimg", ["build"], project.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:") and "stage 'build' failed" in error
    assert "start-interval" in error


def test_frontend_parse_error_names_the_users_line(make_project: Any) -> None:
    project = make_project(HEALTHCHECK)
    error = cli("compimg", ["build"], project.context).stderr.strip()
    assert error.startswith(f"{project.dockerfile}:4: "), error
    assert "line 2" not in error, error


@pytest.mark.parametrize("chosen", ["buildkit", "classic"])
@pytest.mark.parametrize(("instruction", "message"), [
    ("EXPOSE abc", "Invalid containerPort: abc"),
    ("EXPOSE 80/tcpp", "Invalid proto: tcpp"),
])
def test_an_instruction_the_engine_refuses_is_its_line(make_project: Any, chosen: str, instruction: str,
                                                       message: str) -> None:
    project = make_project(f"FROM busybox\n{instruction}\n")
    result = cli("compimg", ["build", "--builder", chosen], project.context)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (f"{project.dockerfile}:2: stage 'stage-0' failed at "
                                                      f"{instruction}: {message}")


def test_an_add_url_that_cannot_be_fetched_is_its_line(make_project: Any) -> None:
    project = make_project("FROM busybox\nADD http://example.invalid/x /x\n")
    result = cli("compimg", ["build"], project.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:2: stage 'stage-0' failed at ADD http://example.invalid/x /x: "
                            'failed to load cache key: Get "http://example.invalid/x"'), error


def test_copy_link_says_which_dockerfile_has_it(make_project: Any) -> None:
    project = make_project("FROM busybox\n\nCOPY --link a /a\n", {"a": "a\n"})
    result = cli("compimg", ["build"], project.context)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{project.dockerfile}:3: COPY --link needs Dockerfile 1.4 (BuildKit 0.10+), and the Dockerfile frontend "
        "built into this BuildKit is older (Docker 20.10's is 1.2): drop --link, or add a "
        "'# syntax=docker/dockerfile:1.4' line at the top of the file where the engine can pull that image")
    # That line is sent: BuildKit then asks for that frontend, which this engine (offline) cannot
    # fetch: said in one warning, and the file goes to the built-in frontend, which lacks --link.
    (project.context / "Dockerfile").write_text("# syntax=docker/dockerfile:1.4\nFROM busybox\nCOPY --link a /a\n")
    result = cli("compimg", ["build"], project.context)
    if result.returncode != 0:  # no registry: the engine's own frontend
        warning, error = result.stderr.strip().splitlines()
        assert warning.startswith("warning: # syntax=docker/dockerfile:1.4: BuildKit cannot fetch that Dockerfile "
                                  "frontend (") and "building with its built-in one" in warning
        assert error.startswith(f"{project.dockerfile}:3: COPY --link needs Dockerfile 1.4"), error


def test_a_syntax_line_whose_frontend_cannot_be_fetched_builds_with_the_builtin_one(make_project: Any,
                                                                                   api: Any) -> None:
    """`# syntax=docker/dockerfile:1` tops many real files; with no registry (or no such image)
    the build says so once and goes on with the engine's frontend (heredocs lowered by us), its
    lines where they were (a failing step is still reported at its own line)."""
    project = make_project("# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox\nCOPY <<EOT /f\nhi\nEOT\n"
                           "RUN cat /f `\n  && false\n")
    result = cli("compimg", ["build", "--progress", "plain"], project.context)
    lines = result.stderr.strip().splitlines()
    if result.returncode == 1 and len(lines) == 2 and "cannot fetch that Dockerfile frontend" in lines[0]:
        assert lines[1].startswith(f"{project.dockerfile}:7: stage 'stage-0' failed at RUN cat /f"), lines
        assert "[stage-0] hi" in result.stdout
    else:  # the engine could fetch the frontend: its own run of the same file
        assert result.returncode == 1 and ":7:" in result.stderr, result.stderr


def test_a_from_platform_without_its_image_says_so(make_project: Any, api: Any, unique: str) -> None:
    api.tag("busybox", unique, "base")  # linux/amd64 only
    advice = ("; no linux/arm64 image of it is on the engine, and BuildKit could not fetch one; pull it for that "
              "platform, or run this stage on the build platform (FROM --platform=$BUILDPLATFORM ...)")
    project = make_project(f"FROM --platform=linux/arm64 {unique}:base\nRUN true\n")
    result = cli("compimg", ["build"], project.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:1: stage 'stage-0' failed at FROM --platform=linux/arm64 "
                            f"{unique}:base: ") and error.endswith(advice), error
    (project.context / "Dockerfile").write_text(f"FROM {unique}:base\nRUN true\n")  # the flag's way: the same
    flag = cli("compimg", ["build", "--platform", "linux/arm64"], project.context).stderr.strip()
    assert flag.startswith(f"{project.dockerfile}:1: stage 'stage-0' failed at FROM {unique}:base: ")
    assert flag.endswith(advice), flag


def test_a_solve_the_daemon_refuses_is_one_line(make_project: Any, monkeypatch: pytest.MonkeyPatch,
                                               spy: SolveSpy) -> None:
    project = make_project("NAME build\nFROM busybox\nRUN true\n")
    # Through compimg a network BuildKit refuses is stopped before any request, in one line:
    result = cli("compimg", ["build"], project.context, {"INVOKE_COMPIMG_NETWORK": "my-network"})
    assert result.returncode == 1
    assert result.stderr.strip() == "network 'my-network': BuildKit builds can use only default, none, host"
    # Let that value through to BuildKit (which still answers for real): one line.
    monkeypatch.setattr(buildkit, "network_for", lambda api, requested: requested)
    with pytest.raises(EngineError) as caught:
        build(project, network="my-network")
    message = str(caught.value)
    assert message == f"{project.dockerfile}:1: stage 'build' failed: invalid netmode my-network"
    assert spy.targets == ["build"]


@pytest.mark.parametrize("instruction, feature", [
    ("RUN --mount=type=cache,target=/root/.cache true {unique}", "RUN --mount"),
    ("RUN --mount=type=bind,from=a,source=/a,target=/m cat /m", "RUN --mount"),
    ("COPY --chmod=600 f.txt /f", "COPY --chmod"),
])
def test_classic_builder_refuses_buildkit_only_instructions(make_project: Any, instruction: str, feature: str,
                                                            unique: str, cache_mounts: None) -> None:
    instruction = instruction.format(unique=unique)
    project = make_project(f"NAME a\nFROM busybox\nRUN echo a > /a\nNAME b\nFROM busybox\n{instruction}\n",
                           {"f.txt": "f\n"})
    result = cli("compimg", ["build", "--builder", "classic", "--progress", "plain"], project.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:6: {feature} needs BuildKit") and "--builder buildkit" in error
    assert result.stdout == ""  # before any request: not even stage a was built
    assert cli("compimg", ["build"], project.context).returncode == 0  # BuildKit builds it


@pytest.mark.parametrize("kind", ["secret", "ssh"])
def test_secret_and_ssh_mounts_need_buildkit_and_a_required_one_needs_its_source(make_project: Any,
                                                                                 kind: str) -> None:
    options = "id=token,target=/t" if kind == "secret" else "target=/agent"
    project = make_project(f"NAME a\nFROM busybox\nRUN --mount=type={kind},{options} true\n")
    classic = cli("compimg", ["build", "--builder", "classic"], project.context)
    error = classic.stderr.strip()
    assert classic.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:3: ") and "needs BuildKit" in error and "--builder buildkit" in error
    # BuildKit: a mount that is not required builds without it, as docker build does
    assert cli("compimg", ["build", "--builder", "buildkit"], project.context).returncode == 0
    (project.context / "Dockerfile").write_text(f"NAME a\nFROM busybox\nRUN --mount=type={kind},{options},required "
                                                "true\n")
    required = cli("compimg", ["build", "--builder", "buildkit"], project.context)
    error = required.stderr.strip()
    assert required.returncode == 1 and error.splitlines() == [error]
    wanted = "--secret id=token,src=PATH" if kind == "secret" else "--ssh default"
    assert error.startswith(f"{project.dockerfile}:3: RUN --mount=type={kind},id=") and wanted in error, error


# --- 5. external base images ----------------------------------------------------------------

@pytest.fixture
def remote_busybox(api: Any, registry: str, unique: str) -> Iterator[str]:
    """busybox pushed to the local registry as REGISTRY/UNIQUE/busybox:1, absent locally."""
    import docker

    repository = f"{registry}/{unique}/busybox"
    api.tag("busybox:latest", repository, "1")
    for message in api.push(repository, tag="1", stream=True, decode=True):
        assert "error" not in message, message
    api.remove_image(f"{repository}:1")
    yield f"{repository}:1"
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_image(f"{repository}:1")


def test_missing_base_images_are_pulled_first_and_pull_forces(make_project: Any, api: Any,
                                                              remote_busybox: str) -> None:
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        api.inspect_image(remote_busybox)
    project = make_project(f"NAME a\nFROM {remote_busybox}\nRUN echo a > /a\n"
                           f"NAME b\nFROM {remote_busybox}\nCOPY a:/a /a\nRUN cat /a\n")
    first = cli("compimg", ["build", "--progress", "plain"], project.context)
    assert first.returncode == 0, first.stderr
    pulls = [line for line in first.stdout.splitlines() if "pulling" in line]
    assert len(pulls) == 1 and pulls[0].endswith(f"pulling {remote_busybox}"), first.stdout
    assert first.stdout.index("pulling") < first.stdout.index("#1 ")  # before the solve
    assert remote_busybox in api.inspect_image(remote_busybox)["RepoTags"]  # through the pull API
    # present now: no pull (and nothing changed: no build either)
    second = cli("compimg", ["build", "--progress", "plain"], project.context)
    assert second.returncode == 0 and "pulling" not in second.stdout, second.stdout
    forced = cli("compimg", ["build", "--pull", "--progress", "plain"], project.context)
    assert forced.returncode == 0, forced.stderr
    assert [line for line in forced.stdout.splitlines() if "pulling" in line] == pulls


# --- 6. warm no-op --------------------------------------------------------------------------

def test_unchanged_build_sends_no_request(make_project: Any, spy: SolveSpy) -> None:
    project = make_project(SMALL + "COPY ctx.txt /ctx\n", {"ctx.txt": "1\n", "unread.txt": "x\n"})
    ids, _, _ = build(project)
    assert spy.targets == ["run"]
    spy.reset()
    again = Project(project.dockerfile, project.context)  # a new process would parse it again
    ids_again, _, builder = build(again)
    assert spy.calls == [] and ids_again == ids
    assert [r.outcome for r in builder.results] == ["reused"]
    (project.context / "unread.txt").write_text("changed, but no stage reads it\n")
    build(Project(project.dockerfile, project.context))
    assert spy.calls == []
    (project.context / "ctx.txt").write_text("2\n")
    ids_changed, _, _ = build(Project(project.dockerfile, project.context))
    assert spy.targets == ["run"] and ids_changed != ids
    # as a user sees it
    result = cli("compimg", ["build", "--progress", "plain"], project.context)
    assert result.returncode == 0 and "#1 " not in result.stdout and table_rows(result.stdout)["run"][1] == "reused"


# --- 7. Ctrl-C ------------------------------------------------------------------------------

def test_ctrl_c_cancels_the_solve_and_leaves_no_process(make_project: Any, unique: str) -> None:
    marker = f"{unique}-sleeper"
    project = make_project(f"NAME slow\nFROM busybox\nRUN echo started && sh -c 'sleep 60; echo {marker}'\n")
    process = subprocess.Popen([*COMPIMG, "build", "--no-cache", "--progress", "plain"], cwd=project.context,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        seen = ""
        while "[slow] started" not in seen:
            line = process.stdout.readline()
            assert line, seen
            seen += line
        assert wait_until(lambda: processes_with(marker), 10), "the RUN step never showed as a process"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and time.monotonic() - started < 5, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("interrupted:")
    assert wait_until(lambda: not processes_with(marker), 5), processes_with(marker)


def test_ctrl_c_in_process_cancels_the_solve(make_project: Any, unique: str, spy: SolveSpy) -> None:
    marker = f"{unique}-sleeper"
    project = make_project(f"NAME slow\nFROM busybox\nRUN sh -c 'sleep 60; echo {marker}'\n")

    def interrupt_when_sleeping() -> None:
        if wait_until(lambda: processes_with(marker), 60):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to the main thread

    def watching() -> set[threading.Thread]:  # the progress view's watch for a build that waits
        return {t for t in threading.enumerate() if t.name == "compimg-solve-watch"}

    before = watching()
    watcher = threading.Thread(target=interrupt_when_sleeping, daemon=True)
    watcher.start()
    started = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        build(project, no_cache=True)
    assert caught.value.code == 130 and time.monotonic() - started < 60
    assert spy.cancelled == ["slow"]
    assert wait_until(lambda: not processes_with(marker), 5), processes_with(marker)
    # the process goes on (the Python API): nothing of the build's view is left watching
    assert wait_until(lambda: not watching() - before, 2), watching() - before


# --- 8. BuildKit-only features --------------------------------------------------------------

GO_MAIN = 'package main\n\nimport "example.com/app/big"\n\nfunc main() {{ println("{word}", big.All(3)) }}\n'
GO_CACHED = """\
NAME build
FROM golang:1.19
COPY . .
RUN --mount=type=cache,id={cache},target=/tmp/gocache go build -o /out/app . && : {cache}
NAME run
FROM busybox
COPY build:/out/app /app
CMD ["/app"]
"""


def big_go_package(functions: int = 1500) -> str:
    """Enough code that a cold compile takes seconds on this machine (with the runtime)."""
    lines = ["package big", ""]
    for i in range(functions):
        lines.append(f"func F{i}(x int) int {{ s := 0; for j := 0; j < x; j++ {{ if j%{i % 7 + 2} == 0 "
                     f"{{ s += j * {i} }} else {{ s -= j }} }}; return s + {i} }}")
    lines.append("func All(x int) int { return " + " + ".join(f"F{i}(x)" for i in range(0, functions, 10)) + " }")
    return "\n".join(lines) + "\n"


def go_build_seconds(stdout: str) -> float:
    number = re.search(r"^\[build\] #(\d+) \[build 3/3\] RUN --mount=type=cache", stdout, re.M)
    assert number, stdout
    done = re.search(rf"^\[build\] #{number[1]} DONE (\d+\.\d)s$", stdout, re.M)
    assert done, stdout
    return float(done[1])


def test_go_build_cache_mount_survives_a_source_edit(make_project: Any, api: Any, unique: str,
                                                    cache_mounts: None) -> None:
    files = {"go.mod": "module example.com/app\n\ngo 1.19\n", "big/big.go": big_go_package(),
             "main.go": GO_MAIN.format(word="v0")}
    project = make_project(GO_CACHED.format(cache=f"{unique}-0"), files)
    cold, warm = [], []
    for attempt in range(3):
        # a cache mount of its own per attempt: the first compile is cold, the edit's is warm
        (project.context / "Dockerfile").write_text(GO_CACHED.format(cache=f"{unique}-{attempt}"))
        for times, word in ((cold, f"cold{attempt}"), (warm, f"warm{attempt}")):
            (project.context / "main.go").write_text(GO_MAIN.format(word=word))
            result = cli("compimg", ["build", "--progress", "plain"], project.context)
            assert result.returncode == 0, result.stdout + result.stderr
            times.append(go_build_seconds(result.stdout))
        status, output = run_image(api, project.local_ref("run"))
        assert status == 0 and output.startswith(f"warm{attempt} "), output
    print(f"go build seconds: cold {cold}, warm {warm}")
    assert statistics.median(warm) * 2.5 < statistics.median(cold), (cold, warm)


def test_copy_chmod(make_project: Any, api: Any) -> None:
    project = make_project("NAME build\nFROM busybox\nRUN mkdir /out && echo x > /out/x && chmod 600 /out/x\n"
                           "NAME run\nFROM busybox\nCOPY --chmod=751 build:/out/x script.sh /d/\n"
                           "COPY --from=build --chmod=640 /out/x /e\n",
                           {"script.sh": "echo hi\n"})
    ids, _, _ = build(project)
    listing = image_listing(api, ids["run"])
    assert listing["d/x"][2] & 0o7777 == 0o751 and listing["d/script.sh"][2] & 0o7777 == 0o751
    assert listing["e"][2] & 0o7777 == 0o640


MOUNTS = """\
NAME tool
FROM busybox
RUN mkdir /out && echo {word} > /out/t
NAME other
FROM busybox
RUN echo other > /o
NAME final
FROM busybox
RUN --mount=type=bind,from=tool,source=/out,target=/m \\
    --mount=type=bind,source=data,target=/data \\
    cat /m/t /data/in.txt > /got
"""


def test_bind_mount_from_a_stage_is_a_dependency(make_project: Any, api: Any, spy: SolveSpy) -> None:
    files = {"data/in.txt": "in\n", "unread.txt": "x\n", "tasks.py": TASKS_PY}
    project = make_project(MOUNTS.format(word="t1"), files)
    final = project.graph.stage("final")
    assert final.depends_on == ("tool",) and [s.name for s in project.graph.needs("final")] == ["tool", "final"]
    parsed = json.loads(cli("compimg", ["parse", "--format", "json"], project.context).stdout)
    assert next(s for s in parsed["stages"] if s["name"] == "final")["depends_on"] == ["tool"]
    assert next(s for s in parsed["stages"] if s["name"] == "final")["mounts"] == [
        {"from": "tool", "type": "bind", "target": "/m"}]
    listed = cli("invoke", ["--help", "compimg.stage.final"], project.context)
    assert listed.returncode == 0
    import invoke_compimg

    assert [t.name for t in invoke_compimg.make_collection(project).collections["stage"]["final"].pre] == ["tool"]
    ids, _, _ = build(project)
    assert run_image(api, ids["final"], ["cat", "/got"]) == (0, "t1\nin\n")
    # minimal contexts: the bind-mounted folder is an input, other files are not
    spy.reset()
    (project.context / "unread.txt").write_text("y\n")
    build(Project(project.dockerfile, project.context))
    assert spy.calls == []
    (project.context / "data/in.txt").write_text("in2\n")
    ids, _, _ = build(Project(project.dockerfile, project.context))
    assert spy.targets == ["final"] and run_image(api, ids["final"], ["cat", "/got"]) == (0, "t1\nin2\n")
    # the mounted stage's change reaches the final image; the stage task builds `tool` first
    (project.context / "Dockerfile").write_text(MOUNTS.format(word="t2"))
    result = cli("invoke", ["compimg.stage.final"], project.context)
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("[tool]") < result.stdout.index("[final]")
    assert run_image(api, project.local_ref("final"), ["cat", "/got"]) == (0, "t2\nin2\n")


# --- 9. fidelity ----------------------------------------------------------------------------

def fidelity_file() -> str:
    from test_build import FIDELITY

    chmod = ("COPY --chmod=600 build:/out/a.txt ./context.txt /app/chmod/\n"
             "COPY --from=build --chmod=755 /out/sub/c.bin /app/chmod-native\n")
    return FIDELITY.replace("EXPOSE 8080/tcp\n", chmod + "EXPOSE 8080/tcp\n")


def test_fidelity_against_docker_buildkit_build_of_the_native_file(make_project: Any, api: Any,
                                                                   unique: str) -> None:
    from invoke_compimg.dockerfile import render

    project = make_project(fidelity_file(), {"context.txt": "from the context\n"})
    ids, _, _ = build(project)
    (project.context / "Dockerfile.native").write_text(render.as_native(project.graph))
    peer = f"{unique}-peer"
    result = subprocess.run([DOCKER_2010, "build", "--network", "none", "-f", "Dockerfile.native", "-t", peer, "."],
                            cwd=project.context, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ours, theirs = image_listing(api, ids["run"]), image_listing(api, peer)
    print("\n".join(f"{e[0]:32} {e[1]:5} {e[2]:o} {e[3]}:{e[4]} {e[5]}" for e in sorted(ours.values())
                    if e[0].startswith("app")))
    assert {k: v for k, v in ours.items() if k.startswith("app")} == \
        {k: v for k, v in theirs.items() if k.startswith("app")}
    assert ours == theirs
    assert ours["app/chmod/a.txt"][2] & 0o7777 == 0o600 and ours["app/chmod/context.txt"][2] & 0o7777 == 0o600
    assert ours["app/chmod-native"][2] & 0o7777 == 0o755
    assert ours["app/owned/c.bin"][3:5] == (7, 8) and ours["app/tree/b.txt"][2] & 0o7777 == 0o4755
    assert ours["app/tree/hard"][1] == "hard" or ours["app/tree/sub/c.bin"][1] == "hard"
    assert config_of(api, ids["run"]) == config_of(api, peer)


def test_names_that_are_not_utf8_travel_as_docker_build_sends_them(make_project: Any, api: Any, unique: str,
                                                                   tmp_path: Path) -> None:
    """A context file named in Latin-1 (`caf\\xe9`), and one made by a step, exported to a
    folder: the same bytes as `docker build` with BuildKit (protobuf's `string` could carry neither)."""
    from invoke_compimg.building.specs import OutputSpec

    latin = os.fsdecode(b"caf\xe9.txt")
    project = make_project("NAME build\nFROM busybox\nCOPY . /ctx/\nRUN touch \"/ctx/made-$(printf '\\351')\"\n"
                           "NAME artifact\nFROM scratch\nCOPY build:/ctx /\n", files={latin: "latin-1 name\n"})
    ids, _, _ = build(project, "build")
    (project.context / "Dockerfile.native").write_text(
        "FROM busybox\nCOPY . /ctx/\nRUN touch \"/ctx/made-$(printf '\\351')\"\n")
    peer = f"{unique}-peer"
    result = subprocess.run([DOCKER_2010, "build", "--network", "none", "-f", "Dockerfile.native", "-t", peer, "."],
                            cwd=project.context, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ours = {k: v for k, v in image_listing(api, ids["build"]).items() if k.startswith("ctx/") and "native" not in k}
    theirs = {k: v for k, v in image_listing(api, peer).items() if k.startswith("ctx/") and "native" not in k}
    assert f"ctx/{latin}" in ours and ours == theirs
    dest = tmp_path / "dest"
    build(project, output=OutputSpec("local", str(dest)))
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(dest)) and b"made-\xe9" in os.listdir(os.fsencode(dest))


def test_on_its_unix_socket_the_engine_takes_the_session_on_its_own_connection(
        make_project: Any, engine: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`POST /session` (the engine is the HTTP/2 client; one HTTP/2 layer) rather than
    Control.Session inside the /grpc connection (two): the context read, a local export."""
    if not engine.over_unix_socket:
        pytest.skip("the engine here is not reached through a unix socket")
    from invoke_compimg.building.specs import OutputSpec
    from invoke_compimg.engine.control import session as control_session

    ways: list[str] = []
    engine_attached = control_session.EngineAttached.__init__
    control_attached = control_session.Attached.__init__

    def on_the_engines_connection(self: Any, *args: Any) -> None:
        ways.append("/session")
        engine_attached(self, *args)

    def through_control(self: Any, *args: Any) -> None:
        ways.append("Control.Session")
        control_attached(self, *args)

    monkeypatch.setattr(control_session.EngineAttached, "__init__", on_the_engines_connection)
    monkeypatch.setattr(control_session.Attached, "__init__", through_control)
    project = make_project("NAME build\nFROM busybox\nCOPY a.txt /out/a.txt\nRUN echo made >> /out/a.txt\n"
                           "NAME artifact\nFROM scratch\nCOPY build:/out /\n", files={"a.txt": "from the context\n"})
    dest = tmp_path / "dest"
    build(project, no_cache=True, output=OutputSpec("local", str(dest)))
    assert (dest / "a.txt").read_text() == "from the context\nmade\n"
    assert ways == ["/session"]


def test_the_session_is_served_once_the_solve_is_sent(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What serves a session is made and attached after the SolveRequest went out (BuildKit
    waits for a session it was told of), so its imports and set-up pass while the daemon starts
    the solve. A session that cannot be made cancels the solve: the error is the build's."""
    from invoke_compimg.engine.control import client, h2_client

    order: list[str] = []
    solves: list[Any] = []  # the Solve calls (kept: an id() could be taken by a later call)
    call, send, attach = h2_client.Connection.call, h2_client.Call.send, client.Control.attach

    def calling(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        made = call(self, path, *args, **kwargs)
        if path == client.SOLVE:
            solves.append(made)
        return made

    def sending(self: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if any(self is solve for solve in solves):
            order.append("solve sent")
        return send(self, data, *args, **kwargs)

    def attaching(self: Any, session: Any) -> Any:
        order.append("session attached")
        return attach(self, session)

    monkeypatch.setattr(h2_client.Connection, "call", calling)
    monkeypatch.setattr(h2_client.Call, "send", sending)
    monkeypatch.setattr(client.Control, "attach", attaching)
    project = make_project("NAME build\nFROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\n",
                           files={"a.txt": "late\n"})
    build(project, no_cache=True)
    assert order == ["solve sent", "session attached"]

    cancelled: list[str] = []
    cancel = h2_client.Call.cancel

    def cancelling(self: Any) -> None:
        if any(self is solve for solve in solves):
            cancelled.append("solve")
        cancel(self)

    def no_session(**kwargs: Any) -> Any:
        raise OSError("the session could not be made")

    monkeypatch.setattr(h2_client.Call, "cancel", cancelling)
    monkeypatch.setattr(client, "dockerfile_session", no_session)
    other = make_project("NAME build\nFROM busybox\nCOPY a.txt /a.txt\n", files={"a.txt": "never read\n"})
    with pytest.raises(OSError, match="the session could not be made"):
        build(other, no_cache=True)
    assert cancelled == ["solve"]
