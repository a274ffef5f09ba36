"""Faults: Ctrl-C at several points, killed runs, a lost or unreachable engine, odd build
output, hostile images, concurrent builds. Real subprocesses, real signals, real engine."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import COMPIMG, cli
from engine_helpers import Builder, count_containers, extract_artifact, processes_with

from invoke_compimg import procs
from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.engine import containers
from invoke_compimg.engine.client import Engine
from invoke_compimg.errors import EngineError, UserError

pytestmark = pytest.mark.engine


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*COMPIMG, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(process: subprocess.Popen[str], marker: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"never saw {marker!r}; output so far:\n{seen}")


def _settles(api, count: int, project=None, marker=None, timeout: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_containers(api, project, marker) <= count:
            return True
        time.sleep(0.2)
    return False


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    return process.returncode, err, time.monotonic() - started


def test_ctrl_c_mid_run(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project(f"NAME slow\nFROM busybox\nRUN echo started && sleep 60 # {unique}\n")
    before = count_containers(api, project, unique)
    process = _start(["build", "--no-cache"], project.context)
    _wait_for(process, "[slow] started")
    code, err, seconds = _interrupt(process)
    assert code == 130 and seconds < 5, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("interrupted:")
    assert before == 0 and _settles(api, 0, project, unique), "the RUN container outlived the interrupted build"
    import glob
    import tempfile

    # BuildKit's session and connection sockets live in folders named by the process: gone too
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"compimg-*-{process.pid}-*")) == []


@pytest.mark.parametrize(("signum", "word"), [(signal.SIGTERM, "terminated"), (signal.SIGHUP, "hung up")])
def test_sigterm_or_sighup_mid_run_cleans_up_as_ctrl_c(make_project, api, unique, signum, word) -> None:  # type: ignore[no-untyped-def]
    """A cancelled CI job (SIGTERM) or a closed terminal (SIGHUP): cancelled on the engine, one
    line, exit 128 + the signal's number, and nothing left (containers, socket folders)."""
    import glob
    import tempfile

    project = make_project(f"NAME slow\nFROM busybox\nRUN echo started && sleep 60 # {unique}\n")
    process = _start(["build", "--no-cache"], project.context)
    _wait_for(process, "[slow] started")
    started = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum and time.monotonic() - started < 5, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"{word}: "), err
    assert _settles(api, 0, project, unique) and processes_with(unique) == []
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"compimg-*-{process.pid}-*")) == []


def test_ctrl_c_mid_extraction_leaves_destination_as_it_was(make_project, api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME big\nFROM busybox\nRUN mkdir /out && dd if=/dev/zero of=/out/big bs=1M count=600\n")
    Builder(project, Settings(), out=io.StringIO()).build()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out").mkdir()
    (dest / "out/old").write_text("old\n")
    before = count_containers(api, project)
    process = _start(["extract-artifact", "big:/out", "--dest", str(dest)], project.context)
    _wait_for(process, "copying big:/out")
    time.sleep(0.3)
    code, err, _ = _interrupt(process)
    assert code == 130, err
    assert sorted(p.name for p in dest.iterdir()) == ["out"]  # no staging folder left
    assert [p.name for p in (dest / "out").iterdir()] == ["old"]
    assert before == 0 and _settles(api, 0, project)


def test_ctrl_c_while_parsing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = ["NAME s0", "FROM busybox"]
    for i in range(1, 30000):
        lines += [f"NAME s{i}", "FROM busybox", f"COPY s{i - 1}:/x /y"]
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
    process = _start(["parse"], tmp_path)
    time.sleep(0.6)
    code, err, seconds = _interrupt(process)
    if code == 0:
        pytest.skip("parsing finished before the signal; machine too fast for this case")
    assert code == 130 and err.startswith("interrupted:") and seconds < 5, err


def test_sigkill_leftovers_are_removed_by_the_next_run(make_project, api, tmp_path, builder) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME big\nFROM busybox\nRUN mkdir /out && dd if=/dev/zero of=/out/big bs=1M count=600\n")
    Builder(project, Settings(), out=io.StringIO()).build()
    dest = tmp_path / "dest"
    process = _start(["extract-artifact", "big:/out", "--dest", str(dest)], project.context)
    _wait_for(process, "copying big:/out")
    deadline = time.monotonic() + 60  # killed while it writes: its staging folder is there
    while time.monotonic() < deadline and not (dest.is_dir() and any(
            p.name.startswith(".compimg-staging-") for p in dest.iterdir())):
        time.sleep(0.02)
    process.kill()
    process.wait()
    label = f"{containers.LABEL_PROJECT}={project.slug}"
    # the killed run's container (BuildKit copies out with a local export: no container at all)
    assert len(api.containers(all=True, filters={"label": label})) == (1 if builder == "classic" else 0)
    assert any(p.name.startswith(".compimg-staging-") for p in dest.iterdir())
    result = cli("compimg", ["extract-artifact", "big:/out", "--dest", str(dest)], project.context)
    assert result.returncode == 0, result.stderr
    assert api.containers(all=True, filters={"label": label}) == []
    assert sorted(p.name for p in dest.iterdir()) == ["out"]
    assert (dest / "out/big").stat().st_size == 600 << 20


def test_clean_removes_a_killed_runs_container(make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("FROM busybox\n")
    ids = Builder(project, Settings(), out=io.StringIO()).build()
    dead = api.create_container(ids["stage-0"], command=["x"], labels={
        containers.LABEL_TEMPORARY: f"{socket.gethostname()}:999999999", containers.LABEL_PROJECT: project.slug})
    live = api.create_container(ids["stage-0"], command=["x"], labels={
        containers.LABEL_TEMPORARY: procs.owner(), containers.LABEL_PROJECT: project.slug})
    try:
        assert containers.reap_leftovers(Engine(), project.slug) == 1
        left = api.containers(all=True, filters={"label": f"{containers.LABEL_PROJECT}={project.slug}"})
        assert [c["Id"] for c in left] == [live["Id"]]
    finally:
        api.remove_container(live, force=True)
        containers.remove(Engine(), dead["Id"])


class CuttingProxy:
    """A unix-socket proxy to the real engine that can drop every connection at once,
    the way a crashing or restarting engine does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect("/var/run/docker.sock")
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_engine_lost_mid_build_then_next_run_works(make_project, api, tmp_path, monkeypatch, unique) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("DOCKER_HOST"):
        pytest.skip("needs the local unix socket")
    project = make_project(f"NAME slow\nFROM busybox\nRUN echo started && sleep 5 && echo done > /x # {unique}\n")
    proxy = CuttingProxy(tmp_path / "engine.sock")
    before = count_containers(api, project, unique)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
    out = io.StringIO()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Builder(project, Settings(no_cache=True), out=out).build()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while "[slow] started" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.cut()
    worker.join(30)
    proxy.close()
    assert errors and isinstance(errors[0], EngineError), errors
    message = str(errors[0])
    assert message.startswith(f"{project.dockerfile}:1: stage 'slow': lost the Docker engine at unix://")
    assert "\n" not in message
    monkeypatch.delenv("DOCKER_HOST")
    assert before == 0 and _settles(api, 0, project, unique)
    ids = Builder(Project(project.dockerfile, project.context), Settings(), out=io.StringIO()).build()
    assert ids["slow"].startswith("sha256:")


def test_wrong_docker_host_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    result = cli("compimg", ["build"], tmp_path, {"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("cannot reach the Docker engine at tcp://127.0.0.1:1 (connection refused); "
                                     "start Docker, or set DOCKER_HOST to the engine to use")


def test_odd_build_output(make_project, builder) -> None:  # type: ignore[no-untyped-def]
    project = make_project(
        "FROM busybox\nRUN printf 'bad \\377\\376 bytes\\n' && head -c 1048576 /dev/zero | tr '\\0' a && echo\n")
    out = io.StringIO()
    Builder(project, Settings(no_cache=True), out=out).build()
    lines = out.getvalue().splitlines()
    assert any(line.startswith("[stage-0] bad ") for line in lines)
    if builder == "classic":
        assert any(len(line) >= 1048576 and line.startswith("[stage-0] aaaa") for line in lines)
    else:  # BuildKit itself clips a step's output (as `docker build` shows it)
        assert any(line.startswith("[stage-0] aaaa") for line in lines)
        assert any("[output clipped, log limit" in line for line in lines)


def _import(api, members: list[tuple[tarfile.TarInfo, bytes | None]], ref: str) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    api.import_image_from_data(buffer.getvalue(), repository=ref.split(":")[0], tag=ref.split(":")[1])


def test_hostile_imported_image_and_an_image_without_cmd(make_project, api, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"", mode: int = 0o644):  # type: ignore[no-untyped-def]
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size, info.mode = kind, link, len(data), mode
        return info, data if kind == tarfile.REGTYPE else None

    _import(api, [entry("out", tarfile.DIRTYPE, mode=0o755), entry("out/ok", data=b"fine"),
                  entry("out/suid", data=b"s", mode=0o4755),
                  entry("out/abs", tarfile.SYMTYPE, "/etc/shadow")], f"{unique}:hostile")
    _import(api, [entry("bin", tarfile.DIRTYPE, mode=0o755), entry("bin/tool", data=b"tool", mode=0o755)],
            f"{unique}:nocmd")
    project = make_project(f"NAME hostile\nFROM {unique}:hostile\nNAME plain\nFROM {unique}:nocmd\n")
    builder = Builder(project, Settings(), out=io.StringIO())
    with pytest.raises(UserError, match="'out/abs' is a link to the absolute path '/etc/shadow'"):
        extract_artifact(project, builder, "hostile:/out", str(tmp_path / "a"))
    assert list((tmp_path / "a").iterdir()) == []
    extract_artifact(project, builder, "hostile:/out/suid", str(tmp_path / "b"))
    assert (tmp_path / "b/suid").stat().st_mode & 0o7777 == 0o755
    extract_artifact(project, builder, "plain:/bin/tool", str(tmp_path / "c"))
    assert (tmp_path / "c/tool").read_bytes() == b"tool"


def test_concurrent_builds_of_one_project_with_different_tags(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project(f"NAME build\nFROM busybox\nRUN echo built > /x # {unique}\nNAME run\nFROM busybox\n"
                           "COPY build:/x /x\nCMD [\"cat\", \"/x\"]\n")
    before = count_containers(api, project, unique)
    runs = [_start(["build", f"--tag={unique}-{n}"], project.context) for n in range(3)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    from engine_helpers import run_image

    for n in range(3):  # each run's own result, tagged as that run asked
        assert run_image(api, f"{unique}-{n}") == (0, "built\n")
    assert count_containers(api, project, unique) == before == 0
    # A fourth run works too (a record that a concurrent run superseded costs a rebuild,
    # never a wrong result).
    again = cli("compimg", ["build", f"--tag={unique}-again"], project.context)
    assert again.returncode == 0, again.stderr
    assert run_image(api, f"{unique}-again") == (0, "built\n")
    # Runs at the same time take our local name from each other's stage images, and none
    # retires an image it did not supersede itself: those are left unnamed (noted for a fix).
    # This test's are known by its marker in their last step, and removed.
    import contextlib

    import docker

    for image in api.images(filters={"dangling": True}, quiet=True):
        with contextlib.suppress(docker.errors.APIError):  # gone meanwhile (a prune elsewhere): fine
            history = api.history(image)
            if history and unique in (history[0].get("CreatedBy") or ""):
                api.remove_image(image)


def test_two_projects_with_the_same_stage_names_do_not_mix(make_project, api) -> None:  # type: ignore[no-untyped-def]
    one = make_project("NAME build\nFROM busybox\nRUN echo one > /x\n", name="one/app")
    two = make_project("NAME build\nFROM busybox\nRUN echo two > /x\n", name="two/app")
    assert one.local_ref("build") != two.local_ref("build")
    first = Builder(one, Settings(), out=io.StringIO()).build()["build"]
    second = Builder(two, Settings(), out=io.StringIO()).build()["build"]
    assert first != second
    assert api.inspect_image(one.local_ref("build"))["Id"] == first


def test_permission_denied_on_the_socket_is_one_line() -> None:
    """As an unprivileged user (the suite runs as root): the socket is root:docker 0660."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(python) or os.environ.get("DOCKER_HOST"):
        pytest.skip("needs root, setpriv and a system python3 to drop privileges")
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    same = f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
    if subprocess.run([python, "-c", same], capture_output=True).returncode:
        pytest.skip("the system python3 differs from the venv's")
    folder = Path(tempfile.mkdtemp(prefix="compimg-nobody-"))  # pytest's tmp_path is root-only
    try:
        folder.chmod(0o755)
        (folder / "Dockerfile").write_text("FROM busybox\n")
        root = Path(__file__).resolve().parent.parent
        as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c"]
        env = {"HOME": str(folder), "PATH": os.environ["PATH"], "PYTHONPATH": f"{root}:{site}"}
        if subprocess.run([*as_nobody, "import invoke_compimg.tasks.cli, docker"], cwd=folder, env=env,
                          capture_output=True).returncode:
            pytest.skip(f"nobody cannot read the checkout or the venv ({root})")
        result = subprocess.run([*as_nobody, "from invoke_compimg.tasks.cli import run; run()", "build"],
                                cwd=folder, capture_output=True, text=True, timeout=60, env=env)
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "cannot reach the Docker engine at unix:///var/run/docker.sock (permission denied); "
        "ask for access to its socket (e.g. join the `docker` group) or run as root")
