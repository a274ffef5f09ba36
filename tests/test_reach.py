"""Beyond one engine: a second dockerd on a loopback TCP port (its own data and exec
roots), and a real registry (Debian's docker-registry) for --push. Both are started by
the fixtures of tests/peers.py and stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import peers
import pytest
from conftest import COMPIMG, ROOT, cli
from peers import free_port

from invoke_compimg.building.project import Project

# The peers' fixtures, bound here so pytest finds them (a plain import would read as unused).
registry = peers.registry
second_engine = peers.second_engine
tls_engine = peers.tls_engine

pytestmark = pytest.mark.engine
HELLO = (ROOT / "examples/hello-go/Dockerfile").read_text()


def test_build_and_extract_on_a_remote_engine(second_engine, api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "hello"
    shutil.copytree(ROOT / "examples/hello-go", project)
    env = {"DOCKER_HOST": second_engine}
    result = cli("compimg", ["build", "--tag", "remote-hello"], project, env, timeout=300)
    assert result.returncode == 0, result.stderr
    result = cli("compimg", ["extract-artifact", "build:/go/bin/app", "--dest", str(tmp_path / "out")], project, env)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(tmp_path / "out/app")], capture_output=True, text=True).stdout == "Hello, 世界\n"
    import docker

    remote = docker.APIClient(base_url=second_engine, version="auto")
    assert remote.inspect_image("remote-hello")
    # Nothing was built on the local engine.
    assert api.images(name="remote-hello") == []
    assert api.images(name=Project(project / "Dockerfile", project).repository) == []
    assert remote.containers(all=True) == []


def test_an_engine_behind_tls_while_requests_trusts_other_cas(tls_engine, make_project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A remote engine as Docker's guide protects it (--tlsverify; DOCKER_TLS_VERIFY and
    DOCKER_CERT_PATH here), with REQUESTS_CA_BUNDLE naming the system's CAs, as a company's
    proxy setup does (and this machine): the docker CLI trusts DOCKER_CERT_PATH/ca.pem all the
    same, and so do we. The BuildKit session, the context and an export travel over TLS."""
    import hashlib

    import requests

    payload = os.urandom(3 << 20)
    project = make_project("NAME build\nFROM busybox\nCOPY big.bin /big.bin\nRUN sha256sum /big.bin > /sum\n"
                           "NAME run\nFROM busybox\nCOPY build:/sum /sum\nCOPY build:/big.bin /big.bin\n",
                           {"big.bin": payload})
    certs = peers.tls_folder(tls_engine)
    env = {"DOCKER_HOST": tls_engine, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs),
           "REQUESTS_CA_BUNDLE": requests.certs.where(), "INVOKE_COMPIMG_BUILDER": "buildkit"}
    result = cli("compimg", ["build", "--tag", "tls-app", "--progress", "plain"], project.context, env)
    assert result.returncode == 0, result.stderr
    assert "without a BuildKit session" not in result.stderr + result.stdout
    out = tmp_path / "out"
    result = cli("compimg", ["build", "-o", str(out)], project.context, env)
    assert result.returncode == 0, result.stderr
    assert (out / "big.bin").read_bytes() == payload
    assert (out / "sum").read_text().split()[0] == hashlib.sha256(payload).hexdigest()
    remote = peers.engine_client(tls_engine)
    assert remote.inspect_image("tls-app")["Size"] > len(payload)
    assert remote.containers(all=True) == []
    # Wrong TLS settings: one line each, that says what to fix.
    stranger = tmp_path / "stranger"
    peers.engine_certificates(stranger)  # a CA and a client certificate the engine does not know
    for changes, words in (({"DOCKER_CERT_PATH": str(tmp_path / "none")}, "lacks ca.pem, cert.pem, key.pem"),
                           ({"DOCKER_TLS_VERIFY": None, "DOCKER_CERT_PATH": None}, "it speaks TLS only"),
                           ({"DOCKER_CERT_PATH": str(stranger)}, "vouches for"),
                           ({"DOCKER_CERT_PATH": str(_mixed(certs, stranger, tmp_path / "mixed"))},
                            "refused our client certificate")):
        result = cli("compimg", ["build"], project.context, {**env, **changes})
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and words in result.stderr, (changes, result.stderr)
        assert tls_engine in result.stderr


def _mixed(engine_certs: Path, stranger: Path, folder: Path) -> Path:
    """The engine's CA with a client certificate it never signed."""
    folder.mkdir()
    shutil.copy(engine_certs / "ca.pem", folder / "ca.pem")
    for name in ("cert.pem", "key.pem"):
        shutil.copy(stranger / name, folder / name)
    return folder


def test_push_to_a_registry(registry, make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME build\nFROM busybox\nRUN echo pushed > /x\nNAME run\nFROM busybox\nCOPY build:/x /x\n")
    ref = f"{registry}/compimg-test/app:v1"
    result = cli("compimg", ["build", "--tag", ref, "--push"], project.context, timeout=300)
    try:
        assert result.returncode == 0, result.stderr
        assert f"[run] pushing {ref}" in result.stdout
        # One line per ref with its digest; per-layer progress only on a terminal.
        assert f"[run] pushed {ref}@sha256:" in result.stdout
        assert "Pushed" not in result.stdout and "Layer already exists" not in result.stdout
        with urllib.request.urlopen(f"http://{registry}/v2/compimg-test/app/tags/list") as response:
            assert json.load(response) == {"name": "compimg-test/app", "tags": ["v1"]}
    finally:
        api.remove_image(ref)


def test_push_to_an_unreachable_registry_is_one_line(make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("FROM busybox\n")
    port = free_port()
    ref = f"127.0.0.1:{port}/nowhere:1"
    result = cli("compimg", ["build", "--tag", ref, "--push"], project.context, timeout=300)
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
        assert api.containers(all=True, filters={"label": f"compimg.project={project.slug}"}) == []
    finally:
        process.kill()
        api.remove_image(ref)


def test_clean_all_cleans_every_project_on_the_engine(second_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On an engine of this test's own: `clean --all` touches every compimg/* repository."""
    import docker

    env = {"DOCKER_HOST": second_engine}
    remote = docker.APIClient(base_url=second_engine, version="auto")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"NAME {name}\nFROM busybox\nRUN echo {name} > /x\n")
        built = cli("compimg", ["build", *(["-t", "mine:1"] if name == "two" else [])], tmp_path / name, env)
        assert built.returncode == 0, built.stderr
    # A temporary container of a run that is gone (the pid of a process that exited).
    finished = subprocess.Popen(["true"])
    finished.wait()
    gone = f"{socket.gethostname()}:{finished.pid}"
    remote.create_container("busybox", labels={"compimg.temporary": gone, "compimg.project": "x"})
    dry = cli("compimg", ["--dry", "clean", "--all"], tmp_path, env)
    assert dry.stdout.startswith("would remove the images of compimg/*"), dry.stderr
    cleaned = cli("compimg", ["clean", "--all"], tmp_path, env, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    lines = cleaned.stdout.splitlines()
    assert lines[0] == "removed 1 temporary container(s) of runs that are gone", lines
    # (The module's other tests may have left projects of their own on this engine: cleaned too.)
    assert any(line.startswith("removed 1 image(s) of compimg/one-") for line in lines), lines
    assert any(line.startswith("removed 0 image(s) of compimg/two-") for line in lines), lines
    assert any(line.startswith("untagged ") and "still named mine:1" in line for line in lines), lines
    assert not [t for i in remote.images() for t in i.get("RepoTags") or [] if t.startswith("compimg/")]
    assert remote.containers(all=True) == [] and remote.inspect_image("mine:1")
