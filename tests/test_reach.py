"""Beyond one engine: a second dockerd on a loopback TCP port (its own data and exec
roots), and a real registry (Debian's docker-registry) for --push. Both are started by
these tests and stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.engine
COMPIMG = [sys.executable, "-c", "from invoke_compimg.cli import main; main()"]
HELLO = (ROOT / "examples/hello-go/Dockerfile").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def second_engine(api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.fail("a second engine needs dockerd and root (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    port = _free_port()
    host = f"tcp://127.0.0.1:{port}"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [dockerd, "--host", host, "--data-root", str(root / "data"), "--exec-root", str(root / "x"),
         "--pidfile", str(root / "pid"), "--bridge=none", "--iptables=false", "--ip-masq=false",
         "--ip6tables=false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/_ping")
        import docker

        remote = docker.APIClient(base_url=host, version="auto")
        for ref in ("busybox:latest", "golang:1.19"):
            remote.load_image(b"".join(api.get_image(ref)))
        yield host
    finally:
        _stop(process)
        log.close()
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_build_and_extract_on_a_remote_engine(second_engine, api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "hello"
    shutil.copytree(ROOT / "examples/hello-go", project)
    env = {**os.environ, "DOCKER_HOST": second_engine}
    result = subprocess.run([*COMPIMG, "build", "--tag", "remote-hello"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([*COMPIMG, "extract-artifact", "build:/go/bin/app", "--dest", str(tmp_path / "out")],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(tmp_path / "out/app")], capture_output=True, text=True).stdout == "Hello, 世界\n"
    import docker

    remote = docker.APIClient(base_url=second_engine, version="auto")
    assert remote.inspect_image("remote-hello")
    # Nothing was built on the local engine.
    assert api.images(name="remote-hello") == []
    assert not [i for i in api.images() for t in (i.get("RepoTags") or []) if t.startswith("compimg/hello-")
                and tmp_path.name in t]
    assert remote.containers(all=True) == []


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("Debian's docker-registry is missing (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="compimg-registry-"))
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def test_push_to_a_registry(registry, make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME build\nFROM busybox\nRUN echo pushed > /x\nNAME run\nFROM busybox\nCOPY build:/x /x\n")
    ref = f"{registry}/compimg-test/app:v1"
    result = subprocess.run([*COMPIMG, "build", "--tag", ref, "--push"], cwd=project.context,
                            capture_output=True, text=True, timeout=300)
    try:
        assert result.returncode == 0, result.stderr
        assert f"[run] pushing {ref}" in result.stdout
        assert "Pushed" in result.stdout or "Layer already exists" in result.stdout
        with urllib.request.urlopen(f"http://{registry}/v2/compimg-test/app/tags/list") as response:
            assert json.load(response) == {"name": "compimg-test/app", "tags": ["v1"]}
    finally:
        api.remove_image(ref)


def test_push_to_an_unreachable_registry_is_one_line(make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("FROM busybox\n")
    port = _free_port()
    ref = f"127.0.0.1:{port}/nowhere:1"
    result = subprocess.run([*COMPIMG, "build", "--tag", ref, "--push"], cwd=project.context,
                            capture_output=True, text=True, timeout=300)
    try:
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pushing {ref}: "), result.stderr
        assert "connection refused" in lines[0]
    finally:
        api.remove_image(ref)


def test_ctrl_c_mid_push(registry, make_project, api) -> None:  # type: ignore[no-untyped-def]
    import signal as signals

    project = make_project("FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=300 2>/dev/null\n")
    ref = f"{registry}/compimg-test/interrupted:v1"
    process = subprocess.Popen([*COMPIMG, "build", "--tag", ref, "--push"], cwd=project.context, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if f"pushing {ref}" in line:
                break
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signals.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130 and time.monotonic() - started < 5, err
        assert err.startswith("interrupted:") and len(err.strip().splitlines()) == 1
        # The registry never got the tag: an interrupted push publishes nothing.
        try:
            with urllib.request.urlopen(f"http://{registry}/v2/compimg-test/interrupted/tags/list") as response:
                assert "v1" not in (json.load(response).get("tags") or [])
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        assert api.containers(all=True, filters={"label": "compimg.temporary"}) == []
    finally:
        process.kill()
        api.remove_image(ref)
