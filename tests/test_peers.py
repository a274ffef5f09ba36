"""The peers of tests/peers.py work through the Docker SDK, and leave nothing running.

These also pin what Podman 4.3's Docker-compatible API does differently from dockerd, so
that a change of Podman version shows up here first."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import docker
import peers
import pytest

pytestmark = pytest.mark.engine

# The peers' fixtures, bound here so pytest finds them (a plain import would read as unused).
podman_service = peers.podman_service
registry = peers.registry
sshd_engine = peers.sshd_engine


def _build(client: docker.APIClient, dockerfile: str, **options: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """(image ID from `aux`, every message) of a classic build of `dockerfile` alone."""
    messages = list(client.build(fileobj=io.BytesIO(dockerfile.encode()), decode=True, rm=True, forcerm=True,
                                 pull=False, **options))
    ids = [m["aux"]["ID"] for m in messages if isinstance(m.get("aux"), dict) and "ID" in m["aux"]]
    return (ids[-1] if ids else None), messages


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("stream", "") for m in messages)


# --- Podman ------------------------------------------------------------------------------


@pytest.fixture
def podman(podman_service: peers.PodmanPeer) -> docker.APIClient:
    return docker.APIClient(base_url=podman_service.docker_host, version="auto")


def test_podman_answers_as_podman(podman: docker.APIClient) -> None:
    names = [c["Name"] for c in podman.version()["Components"]]
    assert "Podman Engine" in names
    # A client can tell Podman from dockerd without /version: /_ping carries Libpod headers.
    assert "Libpod-Api-Version" in podman._get(podman._url("/_ping")).headers


def test_podman_holds_the_stand_ins_under_docker_names(podman: docker.APIClient) -> None:
    tags = {t for image in podman.images() for t in image.get("RepoTags") or []}
    assert {"docker.io/library/busybox:latest", "docker.io/library/golang:1.19"} <= tags
    assert not [t for t in tags if t.startswith("localhost/")]


def test_podman_classic_build_offline(podman: docker.APIClient, podman_service: peers.PodmanPeer) -> None:
    image_id, messages = _build(podman, "FROM busybox\nRUN echo hi\n", network_mode="NetworkDisabled")
    try:
        assert image_id is not None and image_id.startswith("sha256:"), messages
        text = _text(messages)
        assert "STEP 1/2: FROM busybox\n" in text and "STEP 2/2: RUN echo hi\n" in text and "hi\n" in text
        assert text.endswith(f"Successfully built {image_id[7:19]}\n")
        # rm/forcerm: no build container is left, not even one of Podman's hidden ones.
        assert podman.containers(all=True) == []
        assert podman_service.podman("ps", "--all", "--external", "--quiet").stdout == ""
    finally:
        if image_id:
            podman.remove_image(image_id)


def test_podman_build_error_message(podman: docker.APIClient, podman_service: peers.PodmanPeer) -> None:
    image_id, messages = _build(podman, "FROM busybox\nRUN echo before; exit 3\n", network_mode="NetworkDisabled")
    assert image_id is None
    errors = [m for m in messages if "error" in m]
    assert len(errors) == 1
    assert errors[0]["error"] == 'building at STEP "RUN echo before; exit 3": while running runtime: exit status 3\n'
    assert podman_service.podman("ps", "--all", "--external", "--quiet").stdout == ""


def test_podman_tags_are_reported_with_docker_io(podman: docker.APIClient, unique: str) -> None:
    image_id, messages = _build(podman, "FROM busybox\nRUN true\n", network_mode="NetworkDisabled",
                                tag=f"{unique}:v1")
    try:
        assert image_id is not None, messages
        assert podman.inspect_image(f"{unique}:v1")["RepoTags"] == [f"docker.io/library/{unique}:v1"]
        assert podman.tag(image_id, f"{unique}-b", "v2")
        assert f"docker.io/library/{unique}-b:v2" in podman.inspect_image(image_id)["RepoTags"]
        # Images built by Podman carry buildah's label on top of the base image's.
        assert "io.buildah.version" in (podman.inspect_image(image_id)["Config"]["Labels"] or {})
    finally:
        podman.remove_image(image_id, force=True)


@pytest.mark.parametrize(("mode", "isolated"), [(None, False), ("none", False), ("NetworkDisabled", True)])
def test_podman_run_network(podman: docker.APIClient, mode: str | None, isolated: bool) -> None:
    """Podman 4.3 runs RUN in the host's network unless networkmode=NetworkDisabled:
    `none` is ignored (dockerd gives only an unconfigured lo for it)."""
    image_id, messages = _build(podman, f"FROM busybox\nRUN cat /proc/net/dev # {mode}\n",
                                network_mode=mode, nocache=True)
    try:
        assert image_id is not None, messages
        interfaces = {line.split(":")[0].strip() for line in _text(messages).splitlines() if ":" in line
                      and not line.startswith("STEP")}
        assert (interfaces == {"lo"}) is isolated, interfaces
    finally:
        if image_id:
            podman.remove_image(image_id)


def test_podman_takes_buildkit_version_as_classic(podman: docker.APIClient) -> None:
    """`/build?version=2` is not refused: the classic builder answers. /session is 404."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = b"FROM busybox\nRUN echo bk\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    response = podman._post(podman._url("/build"), params={"version": "2", "networkmode": "NetworkDisabled"},
                            data=archive.getvalue(), headers={"Content-Type": "application/x-tar"})
    assert response.status_code == 200
    messages = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert "STEP 2/2: RUN echo bk\n" in _text(messages)
    image_id = next(m["aux"]["ID"] for m in messages if "aux" in m)
    podman.remove_image(image_id)
    assert podman._post(podman._url("/session")).status_code == 404


def test_podman_pushes_to_a_loopback_registry(podman: docker.APIClient, registry: str, unique: str) -> None:
    ref = f"{registry}/{unique}/app"
    assert podman.tag("busybox:latest", ref, "v1")
    try:
        messages = list(podman.push(ref, tag="v1", stream=True, decode=True))
        assert not [m for m in messages if "error" in m], messages
        # No per-layer "Pushed" lines as dockerd prints: the repository line, then the digest.
        assert messages[0] == {"status": f"The push refers to repository [{ref}:v1]"}
        assert messages[-1]["status"].startswith("v1: digest: sha256:")
        with urllib.request.urlopen(f"http://{registry}/v2/{unique}/app/tags/list") as response:
            assert json.load(response)["tags"] == ["v1"]
    finally:
        podman.remove_image(f"{ref}:v1")


def test_podman_containers_and_archives(podman: docker.APIClient) -> None:
    image_id, messages = _build(podman, "FROM busybox\nRUN echo made > /made\n", network_mode="NetworkDisabled")
    assert image_id is not None, messages
    container = podman.create_container(image_id, command=["sh", "-c", "echo out; echo err >&2; exit 4"],
                                        entrypoint=[], network_disabled=True)["Id"]
    try:
        stream, stat = podman.get_archive(container, "/made")
        assert stat["name"] == "made" and stat["size"] == 5
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("made")
            assert member is not None and member.read() == b"made\n"
        with pytest.raises(docker.errors.NotFound):
            podman.get_archive(container, "/nope")
        podman.start(container)
        assert podman.wait(container, timeout=60)["StatusCode"] == 4
        assert podman.logs(container, stdout=True, stderr=False) == b"out\n"
    finally:
        podman.remove_container(container, force=True)
        podman.remove_image(image_id)


# --- sshd ---------------------------------------------------------------------------------


@pytest.fixture
def ssh_env(sshd_engine: peers.SshPeer, monkeypatch: pytest.MonkeyPatch) -> peers.SshPeer:
    """Our process takes the client side's HOME and PATH (the SDK reads them)."""
    for name, value in sshd_engine.env.items():
        monkeypatch.setenv(name, value)
    return sshd_engine


def _transports() -> list[Any]:
    paramiko = pytest.param(False, id="paramiko",
                            marks=pytest.mark.skipif(not _has_paramiko(), reason="paramiko is not installed"))
    return [paramiko, pytest.param(True, id="ssh-client")]


def _has_paramiko() -> bool:
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("use_ssh_client", _transports())
def test_sshd_reaches_the_local_engine(ssh_env: peers.SshPeer, api, use_ssh_client: bool,  # type: ignore[no-untyped-def]
                                       unique: str) -> None:
    remote = docker.APIClient(base_url=ssh_env.docker_host, version="auto", use_ssh_client=use_ssh_client)
    try:
        assert remote.version()["Version"] == api.version()["Version"]
        image_id, messages = _build(remote, "FROM busybox\nRUN echo over ssh\n", tag=f"{unique}:ssh")
        assert image_id is not None, messages
        assert "over ssh\n" in _text(messages)
        assert api.inspect_image(f"{unique}:ssh")["Id"] == image_id  # the same engine
    finally:
        remote.close()
        if api.images(name=unique):
            api.remove_image(f"{unique}:ssh")


def test_sshd_reaches_the_engine_from_a_subprocess(sshd_engine: peers.SshPeer) -> None:
    """The docker CLI (system ssh) with nothing but the peer's env."""
    result = subprocess.run(["docker", "-H", sshd_engine.docker_host, "version", "--format", "{{.Server.Version}}"],
                            env={**os.environ, **sshd_engine.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_ssh_failures_as_the_sdk_raises_them(ssh_env: peers.SshPeer) -> None:
    """What a wrong port or a refused key look like, per transport: paramiko raises its own
    exceptions from APIClient() itself; the ssh client gives a DockerException about an
    aborted connection (ssh's own message goes to our stderr, not into the exception)."""
    wrong_port = f"ssh://root@127.0.0.1:{peers.free_port()}"
    refused = f"ssh://nobody@127.0.0.1:{ssh_env.port}"  # no key of ours is authorised for nobody
    for url in (wrong_port, refused):
        # The cause is BrokenPipeError or RemoteDisconnected, depending on who is faster.
        with pytest.raises(docker.errors.DockerException, match=r"server API version: \('Connection aborted\."):
            docker.APIClient(base_url=url, version="auto", use_ssh_client=True)
    if _has_paramiko():
        import paramiko

        with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
            docker.APIClient(base_url=wrong_port, version="auto")
        with pytest.raises(paramiko.ssh_exception.AuthenticationException):
            docker.APIClient(base_url=refused, version="auto")


# --- nothing left running -----------------------------------------------------------------


def test_peers_leave_nothing_running(api) -> None:  # type: ignore[no-untyped-def]
    with peers.podman_running(api, images=("busybox:latest",)) as podman_peer:
        client = docker.APIClient(base_url=podman_peer.docker_host, version="auto")
        image_id, _ = _build(client, "FROM busybox\nRUN echo x > /x\n", network_mode="NetworkDisabled")
        # A container that is still running when the service stops.
        container = client.create_container(image_id, command=["sleep", "300"], entrypoint=[])["Id"]
        client.start(container)
        client.close()
        podman_root: Path = podman_peer.root
        assert peers.processes_mentioning(str(podman_root))
    with peers.sshd_running() as ssh_peer:
        ssh_root = ssh_peer.root
    for root in (podman_root, ssh_root):
        assert _live(peers.processes_mentioning(str(root))) == []
        assert not root.exists()
        assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert str(podman_root) not in subprocess.run(["runc", "list"], capture_output=True, text=True).stdout


def _live(pids: list[int]) -> list[int]:
    live = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(pid)
    return live
