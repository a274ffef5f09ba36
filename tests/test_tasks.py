"""The Invoke interface as users run it: real `invoke` and `compimg` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMPIMG, INVOKE, ROOT, cli
from engine_helpers import count_containers, run_image

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent"}

HELLO = (ROOT / "examples/hello-go/Dockerfile").read_text()
HELLO_FILES = {name: (ROOT / "examples/hello-go" / name).read_text() for name in ("main.go", "go.mod")}

BROKEN_SIDE = """\
NAME a
FROM busybox
RUN echo a > /a
NAME broken
FROM busybox
RUN echo BROKEN-WAS-BUILT && exit 1
NAME b
FROM busybox
COPY a:/a /a
NAME last
FROM busybox
COPY broken:/x /x
"""

TASKS = """\
from invoke import Collection, task
import invoke_compimg

compimg = invoke_compimg.collection()

@task(pre=[compimg["build"]])
def release(c):
    \"\"\"Our own task, after the image is built.\"\"\"
    print("RELEASE-RAN")

@task
def api(c):
    \"\"\"Use the Python API from a task body.\"\"\"
    ids = invoke_compimg.build(c, target="b")
    print("API-IDS", sorted(ids))

ns = Collection(release, api)
ns.add_collection(compimg)
"""


def _project(make_project, text: str, files: dict[str, str] | None = None, tasks: str = TASKS):  # type: ignore[no-untyped-def]
    project = make_project(text, {**(files or {}), "tasks.py": tasks})
    return project, project.context


def test_list_parse_and_errors_without_engine_calls(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(HELLO)
    (tmp_path / "tasks.py").write_text(TASKS)
    listing = cli("invoke", ["--list"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    for name in ("compimg.build (compimg)", "compimg.stage.build", "compimg.stage.run",
                 "compimg.extract-artifact", "compimg.shell", "compimg.clean", "release"):
        assert name in listing.stdout
    parsed = cli("invoke", ["compimg.parse", "--format", "json"], tmp_path)
    assert json.loads(parsed.stdout)["final"] == "run"
    lowered = cli("invoke", ["compimg.parse", "--stage", "run", "--lowered", "--builder", "classic"], tmp_path)
    assert "COPY --from={{stage:build}} /go/bin/app ." in lowered.stdout
    unknown = cli("invoke", ["compimg.parse", "--stage", "nope", "--lowered"], tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().endswith("unknown stage 'nope' (--stage); known stages: build, run")
    near = cli("invoke", ["compimg.parse", "--stage", "buidl", "--lowered"], tmp_path)
    assert "did you mean 'build'?" in near.stderr
    (tmp_path / "Dockerfile").write_text(HELLO.replace("COPY build:/go", "COPY build:go"))
    message = (f"{tmp_path}/Dockerfile:10: 'build:go/bin/app': the path after 'build:' must be absolute; "
               "write build:/go/bin/app")
    # A broken Dockerfile breaks no other task: the list is there, without the stage tasks.
    broken = cli("invoke", ["--list"], tmp_path)
    assert broken.returncode == 0 and "Traceback" not in broken.stderr
    assert "release" in broken.stdout and "compimg.build" in broken.stdout
    assert "compimg.stage." not in broken.stdout
    assert broken.stderr.strip().splitlines() == [f"{message} (the compimg tasks report this when run)"]
    for task in (["compimg.build"], ["compimg.parse"], ["compimg.extract-artifact", "build:/x"]):
        failed = cli("invoke", task, tmp_path)
        assert failed.returncode == 1 and failed.stderr.strip().splitlines()[-1] == message, failed.stderr


@pytest.mark.engine
def test_stage_tasks_and_build_stage_build_only_prerequisites(make_project) -> None:  # type: ignore[no-untyped-def]
    _, folder = _project(make_project, BROKEN_SIDE)
    result = cli("invoke", ["compimg.stage.b"], folder)
    assert result.returncode == 0, result.stderr
    assert "[a] #" in result.stdout and "[b] #" in result.stdout
    assert "BROKEN-WAS-BUILT" not in result.stdout + result.stderr
    # A stage task takes -q as every task that builds: the stage's ID alone (its pre-tasks,
    # which Invoke runs with no flags, show their builds as config says).
    result = cli("invoke", ["compimg.stage.b", "-q"], folder)
    assert result.returncode == 0, result.stderr
    *before, last = result.stdout.splitlines()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", last) and "[a] " in "\n".join(before), result.stdout
    assert not [line for line in before if line.startswith("[b]")], result.stdout
    result = cli("invoke", ["compimg.build-stage", "b"], folder)
    assert result.returncode == 0 and "BROKEN-WAS-BUILT" not in result.stdout
    result = cli("invoke", ["compimg.build"], folder)
    assert result.returncode == 1
    assert "stage 'broken' failed at RUN echo BROKEN-WAS-BUILT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.engine
def test_composition_api_config_and_seed_tags(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    _, folder = _project(make_project, BROKEN_SIDE.replace("NAME last\nFROM busybox\nCOPY broken:/x /x\n", ""))
    (folder / "invoke.yaml").write_text(f"compimg:\n  tags:\n    a: {unique}-from-config\n")
    result = cli("invoke", ["release"], folder)
    assert result.returncode == 0, result.stderr
    assert "RELEASE-RAN" in result.stdout
    assert result.stdout.index("[b] #") < result.stdout.index("RELEASE-RAN")
    assert api.inspect_image(f"{unique}-from-config")  # config tag applied by the pre-task
    result = cli("invoke", ["compimg.build", f"--tag=b={unique}-b", f"--tag={unique}-final"], folder)
    assert result.returncode == 0, result.stderr
    assert api.inspect_image(f"{unique}-b")["Id"] == api.inspect_image(f"{unique}-final")["Id"]
    result = cli("invoke", ["api"], folder)
    assert "API-IDS ['a', 'b']" in result.stdout, result.stderr
    env = cli("invoke", ["compimg.build"], folder, env={"INVOKE_COMPIMG_TARGET": "a"})
    assert "[b]" not in env.stdout and "[a]" in env.stdout


@pytest.mark.engine
def test_console_script_hello(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project(HELLO, HELLO_FILES)
    result = cli("compimg", ["build", f"--tag=build={unique}-build", f"--tag=run={unique}"], project.context)
    assert result.returncode == 0, result.stderr
    assert "final image 'run'" in result.stdout
    assert run_image(api, unique)[1] == "Hello, 世界\n"
    other = cli("compimg", ["--file", str(project.dockerfile), "parse"], "/", timeout=60)
    assert other.returncode == 0 and "run  line 7  FROM busybox  (final)" in other.stdout
    listing = cli("compimg", ["--list"], project.context)
    assert "stage.build" in listing.stdout and "extract-artifact" in listing.stdout


@pytest.mark.engine
def test_extract_assemble_shell_and_clean_tasks(make_project, api, tmp_path, builder, unique) -> None:  # type: ignore[no-untyped-def]
    # Images of its own (a label per stage): another project building the same file at the same
    # time would otherwise share them, and clean would rightly keep them for it.
    text = re.sub(r"^(FROM .*)$", rf"\1\nLABEL compimg.test={unique}", HELLO, flags=re.M)
    project, folder = _project(make_project, text, HELLO_FILES)
    dest = tmp_path / "out"
    result = cli("invoke", ["compimg.extract-artifact", "build:/go/bin/app", "--dest", str(dest)], folder)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(dest / "app")], capture_output=True, text=True).stdout == "Hello, 世界\n"
    result = cli("invoke", ["compimg.assemble"], folder)
    assert result.returncode == 0 and "[run] #" in result.stdout
    if builder == "classic":  # from the images the prerequisites have; BuildKit: one solve, from its cache
        assert "[build]" not in result.stdout
    before = count_containers(api, project)
    shell = cli("invoke", ["compimg.shell", "run", "--cmd", "sh -c 'ls /app; exit 0'"], folder)
    assert shell.returncode == 0 and "app" in shell.stdout, shell.stderr
    failing = cli("invoke", ["compimg.shell", "run", "--cmd", "sh -c 'exit 4'"], folder)
    assert failing.returncode == 4 and "exited with status 4" in failing.stderr
    assert count_containers(api, project) == before == 0
    cleaned = cli("invoke", ["compimg.clean"], folder)
    assert cleaned.returncode == 0 and "removed 0 container(s) and 2 image(s)" in cleaned.stdout
    assert api.images(name=project.repository) == []


def test_parse_lowered_says_whose_lowering_it_shows(tmp_path: Path) -> None:
    """`parse --lowered` showed the classic builder's `COPY --from={{stage:build}} --chmod=...`,
    which the classic builder then refuses, while a build would use BuildKit."""
    (tmp_path / "Dockerfile").write_text("NAME build\nFROM busybox\nRUN echo > /a\n"
                                         "NAME run\nFROM busybox\nCOPY --chmod=755 build:/a /a\n")
    (tmp_path / "tasks.py").write_text(TASKS)
    classic = cli("invoke", ["compimg.parse", "--lowered", "--builder", "classic"], tmp_path, NO_ENGINE)
    assert classic.returncode == 0, classic.stderr
    assert classic.stdout == "FROM busybox\nCOPY --from={{stage:build}} --chmod=755 /a /a\n"
    assert classic.stderr == ("# classic: --builder classic; stage 'run' alone, each {{stage:NAME}} is replaced by "
                              "that stage's image ID; the classic builder refuses COPY --chmod (line 6): build with "
                              "--builder buildkit\n")
    buildkit = cli("invoke", ["compimg.parse", "--lowered", "--builder", "buildkit"], tmp_path, NO_ENGINE)
    assert buildkit.stdout == ("FROM busybox AS build\nRUN echo > /a\n\n"
                               "FROM busybox AS run\nCOPY --from=build --chmod=755 /a /a\n"), buildkit.stderr
    assert buildkit.stderr.startswith("# buildkit: --builder buildkit; one multi-stage file for 'run'")
    # auto is what a build would use: only then is the engine asked.
    unreachable = cli("invoke", ["compimg.parse", "--lowered"], tmp_path, NO_ENGINE)
    assert unreachable.returncode == 1 and "cannot reach the Docker engine" in unreachable.stderr
    wrong = cli("invoke", ["compimg.parse", "--builder", "classic"], tmp_path, NO_ENGINE)
    assert wrong.stderr.strip() == "--builder goes with --lowered: write `compimg.parse --lowered --builder classic`"


@pytest.mark.engine
def test_parse_lowered_with_auto_asks_the_engine(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("NAME run\nFROM busybox\nCOPY --chmod=755 a /a\n")
    (tmp_path / "tasks.py").write_text(TASKS)
    auto = cli("invoke", ["compimg.parse", "--lowered"], tmp_path, {"INVOKE_COMPIMG_BUILDER": "auto"})
    assert auto.returncode == 0, auto.stderr
    assert auto.stderr.startswith("# buildkit: the builder this engine and file get with --builder auto")
    assert "COPY --chmod=755 ctx/a /a" in auto.stdout


def test_engine_unreachable_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "tasks.py").write_text(TASKS)
    result = cli("invoke", ["compimg.build"], tmp_path, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "cannot reach the Docker engine at unix:///nonexistent.sock (no such file or directory); "
        "start Docker, or set DOCKER_HOST to the engine to use"]



@pytest.mark.engine
def test_interactive_shell_on_a_terminal(make_project, api) -> None:  # type: ignore[no-untyped-def]
    import pty
    import select
    import time

    project = make_project("NAME run\nFROM busybox\nWORKDIR /app\n")
    before = count_containers(api, project)
    pid, fd = pty.fork()
    if pid == 0:  # the child: compimg shell on a real terminal
        os.chdir(project.context)
        os.execv(sys.executable, [*COMPIMG, "shell", "run"])
    seen = b""

    def read_until(marker: bytes) -> bool:
        nonlocal seen
        deadline = time.monotonic() + 120
        while marker not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        return marker in seen

    assert read_until(b"/app # "), seen
    os.write(fd, b"echo inside-$((6*7))\r")
    assert read_until(b"inside-42"), seen
    os.write(fd, b"exit 3\r")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert count_containers(api, project) == before == 0


@pytest.mark.engine
def test_iidfile_and_metadata_file_are_written_on_success_only(make_project, api, unique, tmp_path, builder) -> None:  # type: ignore[no-untyped-def]
    project, folder = _project(make_project, "NAME build\nFROM busybox\nRUN echo a > /a\n"
                                             "NAME run\nFROM busybox\nCOPY build:/a /a\n")
    out = tmp_path / "out"
    out.mkdir()
    iid, meta = out / "iid", out / "meta.json"
    result = cli("invoke", ["compimg.build", "--iidfile", str(iid), "--metadata-file", str(meta), "-t", unique,
                         "--tag", f"build={unique}-build"], folder)
    assert result.returncode == 0, result.stderr
    image = api.inspect_image(unique)["Id"]
    assert iid.read_text() == image  # as docker build --iidfile: the ID, no newline
    written = json.loads(meta.read_text())
    assert sorted(written) == ["build", "run"]
    assert written["run"]["containerimage.config.digest"] == image
    assert written["run"]["image.name"] == f"{unique},{project.local_ref('run')}"
    assert written["build"]["containerimage.config.digest"] == api.inspect_image(f"{unique}-build")["Id"]
    for entry in written.values():
        assert entry["compimg.builder"] == builder and entry["compimg.reused"] is False
        assert isinstance(entry["compimg.seconds"], float)
    again = cli("invoke", ["compimg.build-stage", "run", "--metadata-file", str(meta)], folder)
    assert again.returncode == 0, again.stderr
    assert json.loads(meta.read_text())["run"]["compimg.reused"] is True
    assembled = cli("invoke", ["compimg.assemble", "--iidfile", str(out / "assembled")], folder)
    assert assembled.returncode == 0 and (out / "assembled").read_text() == image, assembled.stderr
    # A failed build leaves the files as they were, and no temporary file beside them.
    before = meta.read_text()
    (folder / "Dockerfile").write_text("NAME run\nFROM busybox\nRUN exit 3\n")
    failed = cli("invoke", ["compimg.build", "--iidfile", str(iid), "--metadata-file", str(meta)], folder)
    assert failed.returncode == 1 and meta.read_text() == before and iid.read_text() == image
    assert sorted(p.name for p in out.iterdir()) == ["assembled", "iid", "meta.json"]
    missing = cli("invoke", ["compimg.build", "--iidfile", str(out / "no/such/iid")], folder)
    assert missing.returncode == 1 and "--iidfile" in missing.stderr and "does not exist" in missing.stderr


@pytest.mark.engine
def test_clean_needs_no_dockerfile(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    """It refused with 'no such file': the images of a deleted Dockerfile could not be cleaned."""
    project, folder = _project(make_project, "NAME build\nFROM busybox\nRUN echo a > /a\n")
    assert cli("invoke", ["compimg.build", "-t", unique], folder).returncode == 0
    assert api.images(name=project.repository)
    (folder / "Dockerfile").write_text("FROMM nothing\n")  # broken
    broken = cli("invoke", ["compimg.clean"], folder)
    assert broken.returncode == 0, broken.stderr
    assert f"removed 0 container(s) and 0 image(s) of {project.repository}" in broken.stdout
    assert api.images(name=project.repository) == [] and api.inspect_image(unique)  # the user's name stays
    assert cli("invoke", ["compimg.build-stage", "build"], folder).returncode == 1  # broken for building
    (folder / "Dockerfile").write_text("NAME build\nFROM busybox\nRUN echo b > /b\n")
    assert cli("invoke", ["compimg.build"], folder).returncode == 0
    (folder / "Dockerfile").unlink()  # gone
    gone = cli("invoke", ["compimg.clean"], folder)
    assert gone.returncode == 0 and f"removed 0 container(s) and 1 image(s) of {project.repository}" in gone.stdout
    assert api.images(name=project.repository) == []


@pytest.mark.engine
@pytest.mark.parametrize("command", ["compimg", "invoke"])
def test_ctrl_c_pressed_again_and_again_exits_130_without_a_traceback(make_project, api, unique, command) -> None:  # type: ignore[no-untyped-def]
    """A second Ctrl-C landed in cleanup or in an atexit callback ("Exception ignored in atexit
    callback ... KeyboardInterrupt"), or after Python had put back the default handler: the
    process then died of SIGINT. Now the first one counts, and the rest are ignored."""
    import pty
    import re
    import select
    import time

    project = make_project(f"NAME a\nFROM busybox\nRUN sleep 30 # {unique}\nNAME b\nFROM busybox\n"
                           f"RUN sleep 30 # {unique}\nNAME run\nFROM busybox\nCOPY a:/etc/passwd /x\n"
                           "COPY b:/etc/passwd /y\n", {"tasks.py": TASKS})
    argv = [*COMPIMG, "build", "--no-cache"] if command == "compimg" else [*INVOKE, "compimg.build", "--no-cache"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a build on a real terminal, with the live view and the classic builder
        os.chdir(project.context)
        os.environ.update(COLUMNS="100", LINES="30", TERM="xterm", INVOKE_COMPIMG_BUILDER="classic")
        os.execv(sys.executable, argv)
    seen, first, last = b"", 0.0, 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.01)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        now = time.monotonic()
        if not first and seen.count(b"RUN sleep 30") >= 2:
            first = now + 1  # both stages are running: press Ctrl-C in a second, then every 20 ms
        if first and now > first and now - last > 0.02:
            with contextlib.suppress(OSError):
                os.write(fd, b"\x03")
            last = now
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert os.waitstatus_to_exitcode(status) == 130, text[-2000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-2000:]
    assert "interrupted: running builds were cancelled" in text
    assert count_containers(api, project) == 0
    # The engine removes the cancelled steps' containers on its own time: wait for it, so the
    # suite's count of containers is not taken while they go.
    deadline = time.monotonic() + 30
    while [c for c in api.containers(all=True) if unique in (c.get("Command") or "")]:
        assert time.monotonic() < deadline, "the cancelled steps' containers stayed"
        time.sleep(0.2)


def _ids_and_names(api, image_ids) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """{image ID: its names} of those of `image_ids` the engine still holds."""
    import docker

    found = {}
    for image_id in image_ids:
        with contextlib.suppress(docker.errors.ImageNotFound):
            found[image_id] = api.inspect_image(image_id).get("RepoTags") or []
    return found


@pytest.mark.engine
def test_a_tag_moved_by_a_rebuild_leaves_no_unnamed_image(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    """A user's report: `build -t x:dev`, an edit and `build`, another edit and `build -t x:dev`
    left the first image as `<none>:<none>`, which `clean` could not find (it carried no name
    of ours any more). Only this test's images are counted: their RUN lines hold its unique word."""
    tag = f"{unique}:dev"
    project = make_project(f"FROM busybox AS run\nRUN echo w1 {unique} > /v\n")
    made: list[str] = []
    try:
        for word, args in [("w1", ["-t", tag]), ("w2", []), ("w3", ["-t", tag])]:
            (project.context / "Dockerfile").write_text(f"FROM busybox AS run\nRUN echo {word} {unique} > /v\n")
            result = cli("compimg", ["build", "--progress", "plain", *args], project.context)
            assert result.returncode == 0, result.stderr
            made.append(api.inspect_image(project.local_ref("run"))["Id"])
        assert run_image(api, tag, ["cat", "/v"]) == (0, f"w3 {unique}\n")
        left = _ids_and_names(api, made)
        assert [i for i, names in left.items() if not names] == []  # nothing of ours unnamed (dangling)
        assert list(left) == [made[2]]  # the superseded ones went: no pile-up
        cleaned = cli("compimg", ["clean"], project.context)
        assert cleaned.returncode == 0, cleaned.stderr
        assert _ids_and_names(api, made) == {made[2]: [tag]}  # your name stays, on the last build
    finally:  # an image left unnamed is found by nothing else
        for image_id, names in _ids_and_names(api, made).items():
            if not names:
                api.remove_image(image_id)


@pytest.mark.engine
def test_a_superseded_image_a_container_uses_stays_named(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    """A rebuild failed ("conflict: unable to remove repository reference ... (must force)")
    when a container used the image it superseded: the engine keeps the last name of an image
    a container uses. The build succeeds, the image stays with its name, and `clean` removes it
    once the container is gone."""
    project = make_project(f"FROM busybox AS run\nRUN echo c1 {unique} > /v\n")
    assert cli("compimg", ["build"], project.context).returncode == 0
    first = api.inspect_image(project.local_ref("run"))["Id"]
    container = api.create_container(first, command=["true"], network_disabled=True)
    try:
        (project.context / "Dockerfile").write_text(f"FROM busybox AS run\nRUN echo c2 {unique} > /v\n")
        rebuilt = cli("compimg", ["build"], project.context)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert api.inspect_image(project.local_ref("run"))["Id"] != first
        names = _ids_and_names(api, [first])[first]
        assert names and all(n.startswith(f"{project.repository}:") for n in names), names
        cleaned = cli("compimg", ["clean"], project.context)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "kept: still used by another image or container" in cleaned.stdout
        assert _ids_and_names(api, [first])[first]  # still named: the next clean finds it
    finally:
        api.remove_container(container, force=True)
    assert cli("compimg", ["clean"], project.context).returncode == 0
    assert _ids_and_names(api, [first]) == {}


@pytest.mark.engine
def test_an_output_written_into_the_context_is_read_by_copy_dot_until_dockerignored(make_project, tmp_path,  # type: ignore[no-untyped-def]
                                                                                   builder) -> None:
    """What the README's hint says: `--iidfile iid` in the context folder is a new context
    file, so the next build of a `COPY . .` stage runs again; listed in .dockerignore it is not."""
    _, folder = _project(make_project, "NAME build\nFROM busybox\nCOPY . /src\n")
    meta = tmp_path / "meta.json"  # outside the context: it changes nothing

    def reused(*flags: str) -> bool:
        result = cli("compimg", ["-q", "--metadata-file", str(meta), *flags], folder)
        assert result.returncode == 0, result.stderr
        return bool(json.loads(meta.read_text())["build"]["compimg.reused"])

    reused("--iidfile", "iid")
    assert (folder / "iid").exists() and not reused()  # iid is new in the context: COPY . . reads it
    assert reused()
    (folder / ".dockerignore").write_text("iid\n")
    reused()  # .dockerignore itself is a new file
    assert reused("--iidfile", "iid") and reused()
