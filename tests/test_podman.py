"""The user-level scenarios against a real Podman service (tests/peers.py: its own storage,
run state and configuration in a temp folder, stopped and removed afterwards), through
`compimg` and `invoke` subprocesses with DOCKER_HOST set to it.

What Podman 4.3's compatible API does differently (see test_peers.py) and how we answer:
classic builder only (`auto` picks it; `--builder buildkit` is one line), `STEP n/m:` lines,
names reported as `docker.io/...`, `network: none` sent as `NetworkDisabled`, no build cancel
(Ctrl-C says so: the running step ends on its own and nothing is tagged)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import peers
import pytest
from conftest import COMPIMG, INVOKE, ROOT, cli

from invoke_compimg.building.project import Project
from invoke_compimg.names import normalise_ref

pytestmark = pytest.mark.engine

# The peers' fixtures, bound here so pytest finds them (a plain import would read as unused).
podman_service = peers.podman_service
registry = peers.registry

TASKS = "from invoke import Collection\nimport invoke_compimg\n\nns = Collection()\n" \
        "ns.add_collection(invoke_compimg.collection())\n"


def _env(peer: peers.PodmanPeer, **more: str) -> dict[str, str]:
    return {**peer.env, "DOCKER_HOST": peer.docker_host, "PYTHONUNBUFFERED": "1", **more}


def _project(tmp_path: Path, dockerfile: str, name: str = "proj") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "Dockerfile").write_text(dockerfile)
    (folder / "tasks.py").write_text(TASKS)
    return folder


def _names(peer: peers.PodmanPeer) -> set[str]:
    """Every image name Podman holds, as Docker's CLI would show it."""
    listed = peer.podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    return {normalise_ref(n) for n in listed if not n.startswith("<none>")}


def _image_count(peer: peers.PodmanPeer) -> int:
    return len(peer.podman("images", "--all", "--quiet", "--no-trunc").stdout.split())


def _repository(folder: Path) -> str:
    return Project(folder / "Dockerfile", folder).repository


def test_hello_go_build_run_extract_shell_clean(podman_service: peers.PodmanPeer, tmp_path: Path) -> None:
    peer = podman_service
    project = tmp_path / "hello"
    shutil.copytree(ROOT / "examples/hello-go", project)
    built = cli("compimg", ["build", "--tag", "build=pm-hello-build", "--tag", "pm-hello:v1"], project, _env(peer),
                timeout=600)
    assert built.returncode == 0, built.stderr
    assert "classic" in built.stdout  # auto chose the classic builder
    assert {"pm-hello:v1", "pm-hello-build:latest"} <= _names(peer)
    ran = peer.podman("run", "--rm", "--network", "none", "pm-hello:v1")
    assert ran.stdout == "Hello, 世界\n", ran.stderr

    out = tmp_path / "out"
    extracted = cli("compimg", ["extract-artifact", "build:/go/bin/app", "--dest", str(out)], project, _env(peer),
                    timeout=600)
    assert extracted.returncode == 0, extracted.stderr
    assert subprocess.run([str(out / "app")], capture_output=True, text=True).stdout == "Hello, 世界\n"

    shell = cli("compimg", ["shell", "run", "--cmd", "sh -c './app; echo to-stderr >&2; exit 3'"], project,
                _env(peer), timeout=600)
    assert shell.returncode == 3, shell.stderr
    assert shell.stdout.endswith("Hello, 世界\n") and shell.stderr.startswith("to-stderr\n")
    assert peer.podman("ps", "--all", "--external", "--quiet").stdout == ""  # no container left

    # Our names in Podman's spelling (docker.io/compimg/...) are found and removed; the
    # user's own tags stay.
    repository = _repository(project)
    assert [n for n in _names(peer) if n.startswith(repository + ":")]
    cleaned = cli("compimg", ["clean"], project, _env(peer), timeout=600)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not [n for n in _names(peer) if n.startswith(repository + ":")]
    assert {"pm-hello:v1", "pm-hello-build:latest"} <= _names(peer)
    peer.podman("rmi", "pm-hello:v1", "pm-hello-build")


def test_rebuilds_do_not_pile_up_and_warm_builds_are_noops(podman_service: peers.PodmanPeer,
                                                           tmp_path: Path) -> None:
    peer = podman_service
    project = tmp_path / "hello"
    shutil.copytree(ROOT / "examples/hello-go", project)
    first = cli("compimg", ["build", "--progress", "plain"], project, _env(peer), timeout=600)
    assert first.returncode == 0, first.stderr
    after_first = _image_count(peer)
    started = time.monotonic()
    warm = cli("compimg", ["build", "--progress", "plain"], project, _env(peer), timeout=600)
    warm_seconds = time.monotonic() - started
    assert warm.returncode == 0, warm.stderr
    assert "[build] reused" in warm.stdout and "[run] reused" in warm.stdout
    assert "STEP" not in warm.stdout and " RUN " not in warm.stdout  # nothing sent to Podman
    assert warm_seconds < 15
    for word in ("monde", "world"):  # two edits, two rebuilds: the same number of images
        main = project / "main.go"
        main.write_text(main.read_text().replace("世界", f"{word} 世界"))
        again = cli("compimg", ["build"], project, _env(peer), timeout=600)
        assert again.returncode == 0, again.stderr
        assert _image_count(peer) == after_first
    assert cli("compimg", ["clean"], project, _env(peer), timeout=600).returncode == 0


def test_failing_run_names_the_users_line(podman_service: peers.PodmanPeer, tmp_path: Path) -> None:
    project = _project(tmp_path, "NAME a\nFROM busybox\nRUN echo one\n\nRUN echo before; exit 3\n"
                                 "NAME b\nFROM busybox\nCOPY a:/etc/hostname /x\n")
    result = cli("compimg", ["build", "--progress", "plain"], project, _env(podman_service), timeout=600)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{project / 'Dockerfile'}:5: stage 'a' failed at RUN echo before; exit 3: ")
    assert "exit status 3" in lines[0]
    assert "before\n" in result.stdout  # the step's output, from Podman's STEP lines
    assert podman_service.podman("ps", "--all", "--external", "--quiet").stdout == ""


@pytest.mark.parametrize(("network", "isolated"), [("none", True), ("", False)])
def test_network_none_isolates_run(podman_service: peers.PodmanPeer, tmp_path: Path, network: str,
                                   isolated: bool) -> None:
    """`network: none` is sent as Podman's NetworkDisabled: RUN sees only lo. Without it
    Podman 4.3 runs RUN in the host's network (the contrast shows the test can fail)."""
    project = _project(tmp_path, f"FROM busybox\nRUN cat /proc/net/dev # {network or 'default'}\n")
    result = cli("compimg", ["build", "--progress", "plain", "--no-cache"], project,
                 _env(podman_service, INVOKE_COMPIMG_NETWORK=network), timeout=600)
    assert result.returncode == 0, result.stderr
    interfaces = {line.split("]", 1)[1].split(":")[0].strip() for line in result.stdout.splitlines()
                  if line.startswith("[stage-0] ") and ":" in line and "|" not in line and "#" not in line}
    assert (interfaces == {"lo"}) is isolated, result.stdout
    cli("compimg", ["clean"], project, _env(podman_service), timeout=600)


def test_push_to_a_loopback_registry(podman_service: peers.PodmanPeer, registry: str, tmp_path: Path) -> None:
    project = _project(tmp_path, "NAME build\nFROM busybox\nRUN echo pushed > /x\nNAME run\nFROM busybox\n"
                                 "COPY build:/x /x\n")
    ref = f"{registry}/compimg-podman/app:v1"
    result = cli("compimg", ["build", "--tag", ref, "--push"], project, _env(podman_service), timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"[run] pushed {ref}@sha256:" in result.stdout  # Podman gives the digest only in words
    with urllib.request.urlopen(f"http://{registry}/v2/compimg-podman/app/tags/list") as response:
        assert json.load(response)["tags"] == ["v1"]
    cli("compimg", ["clean"], project, _env(podman_service), timeout=600)
    podman_service.podman("rmi", ref)


def test_builder_buildkit_is_one_line(podman_service: peers.PodmanPeer, tmp_path: Path) -> None:
    project = _project(tmp_path, "FROM busybox\nRUN true\n")
    result = cli("compimg", ["build", "--builder", "buildkit"], project, _env(podman_service), timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"--builder buildkit: Podman 4.3.1 at {podman_service.docker_host} offers no BuildKit; "
        "use --builder classic (or auto)"], result.stderr


@pytest.mark.parametrize("runner", ["compimg", "invoke"])
def test_ctrl_c_mid_run(podman_service: peers.PodmanPeer, tmp_path: Path, runner: str) -> None:
    """No cancel API: the line says the step finishes on its own; exit 130; nothing tagged;
    Podman's working container goes once the step ends."""
    peer = podman_service
    project = _project(tmp_path, f"FROM busybox\nRUN echo started; sleep 6; echo finished # {runner}\n")
    command = [*COMPIMG, "build"] if runner == "compimg" else [*INVOKE, "compimg.build"]
    process = subprocess.Popen([*command, "--tag", f"pm-interrupted-{runner}:v1", "--progress", "plain"],
                               cwd=project, env={**os.environ, **_env(peer)}, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "started" in line:
                break
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130 and time.monotonic() - sent < 5, err
        assert err.strip().splitlines() == [
            "interrupted: Podman has no API to cancel a build, so the step it is running finishes on its own "
            "and nothing is tagged; temporary containers and folders of this run were removed"], err
    finally:
        process.kill()
    deadline = time.monotonic() + 30
    while peer.podman("ps", "--all", "--external", "--quiet").stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert peer.podman("ps", "--all", "--external", "--quiet").stdout == ""
    repository = _repository(project)
    assert not [n for n in _names(peer) if n.startswith(("pm-interrupted", repository))]


def test_onbuild_base_image_reads_the_context(podman_service: peers.PodmanPeer, tmp_path: Path) -> None:
    """Podman's inspect shows no ONBUILD triggers: compimg reads them from the history, sends
    the file the trigger copies, and names the user's failing line despite Podman counting
    the triggers as steps."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "Dockerfile").write_text("FROM busybox\nONBUILD COPY only.txt /x\n")
    # Docker format: the OCI format has no ONBUILD (Podman drops the triggers)
    built = podman_service.podman("build", "--format", "docker", "--network", "none", "-t", "localhost/compimg-onb:1",
                                  str(base))
    assert built.returncode == 0, built.stderr
    project = _project(tmp_path, "NAME app\nFROM localhost/compimg-onb:1\nRUN cat /x\nRUN exit 4\n")
    (project / "only.txt").write_text("from the trigger\n")
    result = cli("compimg", ["build", "--progress", "plain"], project, _env(podman_service), timeout=600)
    assert "from the trigger" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"{project / 'Dockerfile'}:4: stage 'app' failed at RUN exit 4"), \
        result.stderr


def test_heredocs_build_the_same_image_as_without(podman_service: peers.PodmanPeer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """test_heredocs.py's heredoc forms on Podman (the classic path, /dev mounted noexec)."""
    import docker
    from engine_helpers import config_of, image_listing
    from test_heredocs import HEREDOC, PLAIN, PLAIN_FILES

    peer = podman_service
    for name, dockerfile, files in (("heredoc", HEREDOC, {"note.txt": "a note\n"}), ("plain", PLAIN, PLAIN_FILES)):
        folder = _project(tmp_path, dockerfile, name)
        for file, content in files.items():
            (folder / file).write_text(content)
            (folder / file).chmod(0o644)
        result = cli("compimg", ["build", "-t", f"heredoc-test-{name}:1", "--progress", "plain"], folder,
                     _env(peer), timeout=600)
        assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    podman = docker.APIClient(base_url=peer.docker_host, version="auto")
    monkeypatch.setenv("DOCKER_HOST", peer.docker_host)  # image_listing's engine
    assert image_listing(podman, "heredoc-test-heredoc:1") == image_listing(podman, "heredoc-test-plain:1")
    assert config_of(podman, "heredoc-test-heredoc:1") == config_of(podman, "heredoc-test-plain:1")
