"""`DOCKER_HOST=ssh://...`: the user-level tasks through our loopback sshd (tests/peers.py),
with both of the SDK's transports, and an unreachable engine as one line.

Transport: paramiko when it is installed (the SDK's default), the system `ssh` command with
COMPIMG_SSH_CLIENT=1 (or when paramiko is missing); see `engine.connect`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import peers
import pytest
from conftest import ROOT, cli

from invoke_compimg.building.project import Project

pytestmark = pytest.mark.engine

# The peers' fixtures, bound here so pytest finds them (a plain import would read as unused).
sshd_engine = peers.sshd_engine

TRANSPORTS = [pytest.param("0", id="paramiko"), pytest.param("1", id="ssh-client")]


def _env(peer: peers.SshPeer, transport: str, host: str | None = None) -> dict[str, str]:
    return {**peer.env, "DOCKER_HOST": host or peer.docker_host, "COMPIMG_SSH_CLIENT": transport}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_build_extract_shell_over_ssh(sshd_engine: peers.SshPeer, api, tmp_path: Path,  # type: ignore[no-untyped-def]
                                      transport: str, unique: str) -> None:
    project = tmp_path / "hello"
    shutil.copytree(ROOT / "examples/hello-go", project)
    env = _env(sshd_engine, transport)
    repository = Project(project / "Dockerfile", project).repository + ":"
    try:
        built = cli("compimg", ["build", "--tag", f"{unique}:ssh"], project, env)
        assert built.returncode == 0, built.stderr
        # The same engine as the socket's: the image is there.
        assert api.inspect_image(f"{unique}:ssh")["Config"]["Cmd"] == ["./app"]
        out = tmp_path / "out"
        extracted = cli("compimg", ["extract-artifact", "build:/go/bin/app", "--dest", str(out)], project, env)
        assert extracted.returncode == 0, extracted.stderr
        assert subprocess.run([str(out / "app")], capture_output=True, text=True).stdout == "Hello, 世界\n"
        shell = cli("compimg", ["shell", "run", "--cmd", "sh -c './app; echo to-stderr >&2; exit 3'"], project, env)
        assert shell.returncode == 3, shell.stderr
        assert shell.stdout.endswith("\nHello, 世界\n") and shell.stderr.startswith("to-stderr\n")
        cleaned = cli("compimg", ["clean"], project, env)
        assert cleaned.returncode == 0, cleaned.stderr
        assert not [t for i in api.images() for t in i.get("RepoTags") or [] if t.startswith(repository)]
        # this project's temporary containers (others' builds on the shared engine have theirs)
        slug = Project(project / "Dockerfile", project).slug
        assert api.containers(all=True, filters={"label": f"compimg.project={slug}"}) == []
    finally:
        cli("compimg", ["clean"], project, {})  # the same engine, through its socket
        if api.images(name=unique):
            api.remove_image(f"{unique}:ssh")


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_over_ssh_is_one_line(sshd_engine: peers.SshPeer, tmp_path: Path, transport: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    port = sshd_engine.port
    cases = {
        "wrong port": (f"ssh://root@127.0.0.1:{peers.free_port()}", ("connection refused", "nothing answers")),
        "refused key": (f"ssh://nobody@127.0.0.1:{port}", ("permission denied", "refused our keys")),
        "unknown host": (f"ssh://root@localhost:{port}", ("host key verification failed", "unknown or changed")),
    }
    for case, (host, words) in cases.items():
        result = cli("compimg", ["build"], tmp_path, _env(sshd_engine, transport, host), timeout=120)
        line = _one_line(result)
        assert line.startswith(f"cannot reach the Docker engine at {host} through ssh ("), (case, line)
        assert any(word in line.lower() for word in words), (case, line)
        assert "docker version`" in line, (case, line)  # says what to check


def test_paramiko_asked_for_but_missing_is_one_line(sshd_engine: peers.SshPeer, tmp_path: Path) -> None:
    """COMPIMG_SSH_CLIENT=0 without paramiko: say how to get it, or how to do without."""
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "paramiko.py").write_text("raise ImportError('blocked for this test')\n")
    env = {**_env(sshd_engine, "0"), "PYTHONPATH": str(blocker)}
    line = _one_line(cli("compimg", ["build"], tmp_path, env, timeout=120))
    assert "pip install paramiko" in line and "COMPIMG_SSH_CLIENT=1" in line
