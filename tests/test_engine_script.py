"""scripts/engine: idempotent, and the offline stand-in base images work."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT
from engine_helpers import run_image

pytestmark = pytest.mark.engine


def test_engine_script_is_idempotent(api) -> None:  # type: ignore[no-untyped-def]
    before = api.info()
    pidfile = Path("/var/run/docker.pid")
    pid_before = pidfile.read_text() if pidfile.exists() else None
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "scripts/engine")], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "starting dockerd" not in result.stderr and "importing" not in result.stderr
    after = api.info()
    assert after["ID"] == before["ID"]
    if pid_before is not None:  # the same dockerd process: not restarted or replaced
        assert pidfile.read_text() == pid_before
    assert elapsed < 10


@pytest.mark.parametrize("ref", ["busybox:latest", "golang:1.19"])
def test_stand_in_is_labelled_or_real(api, ref: str) -> None:  # type: ignore[no-untyped-def]
    image = api.inspect_image(ref)
    labels = image["Config"].get("Labels") or {}
    if "compimg.standin" in labels:  # ours says where it comes from, and is one imported layer
        assert labels["compimg.standin"].startswith("debian ")
        assert len(image["RootFS"]["Layers"]) == 1
    else:  # a real image came from a registry: it has the digest the registry gave it
        assert image.get("RepoDigests"), f"{ref} is neither our stand-in nor a pulled image"


def test_busybox_runs_sh(api) -> None:  # type: ignore[no-untyped-def]
    assert run_image(api, "busybox:latest", ["sh", "-c", "echo ok"]) == (0, "ok\n")


def test_golang_builds_a_static_hello_world(api) -> None:  # type: ignore[no-untyped-def]
    status, out = run_image(api, "golang:1.19", ["go", "version"])
    assert status == 0 and out.startswith("go version go1.19"), out
    script = (
        "mkdir -p /tmp/h && cd /tmp/h && printf 'package main\\nimport \"fmt\"\\n"
        "func main() { fmt.Println(\"static ok\") }\\n' > main.go && "
        "printf 'module h\\ngo 1.19\\n' > go.mod && go build -o /tmp/h/app . && "
        "/tmp/h/app && if grep -q ld-linux /tmp/h/app; then echo DYNAMIC; else echo STATIC; fi"
    )
    status, out = run_image(api, "golang:1.19", ["sh", "-c", script])
    assert status == 0, out
    assert "static ok" in out
    assert "STATIC" in out  # no dynamic loader named in the binary


def test_only_the_test_suite_installs_the_test_tools(tmp_path: Path) -> None:
    """`scripts/dev demo` installed Podman and an sshd, which only the tests use. With the
    engine up and the images there, plain `scripts/engine` asks for no package, and
    `--test-tools` for the test peers' (dpkg-query and apt-get stand-ins record what is asked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "asked"
    for tool in ("dpkg-query", "apt-get"):  # "not installed", and an install that records its packages
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {1 if tool == "dpkg-query" else 0}\n')
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    plain = subprocess.run([str(ROOT / "scripts/engine")], capture_output=True, text=True, timeout=120, env=env)
    assert plain.returncode == 0, plain.stderr
    assert not log.exists(), log.read_text()
    tools = subprocess.run([str(ROOT / "scripts/engine"), "--test-tools"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert tools.returncode == 0, tools.stderr
    installs = [line for line in log.read_text().splitlines() if line.startswith("apt-get") and "install" in line]
    assert len(installs) == 1 and "podman" in installs[0] and "openssh-server" in installs[0], log.read_text()
