"""The Invoke glue on a replayed engine (engine_scenarios: tasks): the Python API's operations,
a stage's own task and the `compimg` command reach the engine that DOCKER_HOST names, as a
user's `invoke` would; here that is the fake, with what the real engine answered."""

from __future__ import annotations

from typing import Any

import pytest
from engine_scenarios import replayed

from invoke_compimg.errors import UserError


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with replayed("tasks", tmp_path_factory.mktemp("tasks")) as (found, fake):
        yield found, fake


def test_build_then_the_stage_tasks_reuse_what_this_process_built(seen: Any) -> None:
    found, fake = seen
    assert set(found.ids) == {"build", "run"}
    assert found.stage == {"build": found.ids["build"]}
    assert found.assembled == found.task == found.ids["run"]
    lines = found.out.splitlines()
    assert lines.count("stage  image         size    seconds  builder") == 1  # one table per build...
    assert sum("(memo)" in line for line in lines) == 2  # ... build-stage and assemble: remembered
    assert f"[run] memo {found.ids['run'][7:19]} (2.0 MB) as {found.project.local_ref('run')}" in lines
    sent = [r for r in fake.requests("POST", "/build$") if r.param("version") != "2"]
    assert [r.param("t").rsplit(":", 1)[1] for r in sent] == ["build", "run"]  # the classic builder, as configured


def test_extract_artifact_writes_the_file_and_says_so(seen: Any) -> None:
    found, _ = seen
    assert found.names == ["app"] and (found.dest / "app").read_text() == "v1\n"
    assert f"extracted build:/out/app -> {found.dest / 'app'} (1 entry)" in found.out.splitlines()
    assert isinstance(found.missing, UserError)
    assert str(found.missing).endswith("'/nope' does not exist in stage 'build'; check the path with "
                                       "`compimg.shell build`")


def test_shell_runs_the_command_in_the_stages_image(seen: Any) -> None:
    found, fake = seen
    assert "v1" in found.out.splitlines()  # `cat /app`
    assert isinstance(found.shell, UserError) and found.shell.code == 4
    assert str(found.shell) == "`cat /app; exit 4` in stage 'run' exited with status 4"
    [shell] = [r for r in fake.requests("POST", "/containers/create$") if r.param("name", ).startswith("compimg-shell")]
    assert shell.sent["json"]["Cmd"] == ["sh", "-c", "cat /app; exit 4"]


def test_the_compimg_command_prints_only_the_image_id_when_quiet(seen: Any) -> None:
    found, fake = seen
    assert found.cli_exit in (None, 0) and found.cli_err == ""
    [image_id] = found.cli_out.split()
    assert image_id.startswith("sha256:")
    solves = [r.sent["json"] for r in fake.requests("GRPC", "Control/Solve$")]
    assert [s["FrontendAttrs"]["target"] for s in solves] == ["run"]  # auto: this engine's BuildKit, with a session
    assert not [r for r in fake.requests("POST", "/build$") if r.param("version") == "2"]


def test_clean_says_what_it_removed_and_what_it_kept(seen: Any) -> None:
    found, _ = seen
    lines = found.clean_out.splitlines()
    assert lines[0] == f"removed 0 container(s) and 2 image(s) of {found.project.repository}"
    assert lines[1].startswith(f"untagged {found.ids['run'][7:19]}, kept: still named compimg-fake-")

