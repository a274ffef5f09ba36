"""Builds on a BuildKit service (`--buildkit-host`, `BUILDKIT_HOST`), as buildctl and buildx's
remote driver reach one. No buildkitd can be installed here: tests/control_bridge.py stands in
for one on loopback tcp (optionally with TLS), piping each connection into the engine's own
`POST /grpc`, the same Control service. What it cannot stand in for is said in the README:
mTLS against a real buildkitd, and the exporters only a buildkitd has (`image` with push)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from control_bridge import running

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent
# The stand-in is the engine's BuildKit, which has no `bridge` network here (dockerd --bridge=none);
# a real buildkitd has its own. RUN steps get no network, as the suite's other builds.
NO_NETWORK = {"INVOKE_COMPIMG_NETWORK": "none", "INVOKE_COMPIMG_BUILDER": None, "BUILDKIT_HOST": None}

APP = """\
NAME build
FROM busybox
COPY greeting.txt /src/
RUN --mount=type=secret,id=token cat /src/greeting.txt /run/secrets/token > /out.txt
NAME artifact
FROM scratch
COPY build:/out.txt /
"""


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with running() as address:
        yield address


def test_files_out_of_a_buildkit_service_with_a_secret(make_project: Any, service: str, tmp_path: Path,
                                                        api: Any) -> None:
    project = make_project(APP, {"greeting.txt": "hello from the service\n"})
    secret = tmp_path / "token"
    secret.write_text("and a secret\n")
    out = tmp_path / "out"
    result = cli("compimg", ["build", "--buildkit-host", service, "-o", str(out), "--secret", f"id=token,src={secret}"],
                 project.context, NO_NETWORK)
    assert result.returncode == 0, result.stderr
    assert (out / "out.txt").read_text() == "hello from the service\nand a secret\n"
    assert "buildkit" in result.stdout and "(exported)" in result.stdout
    # nothing went to the engine's image store: a service has none of its own to give
    assert api.images(name=project.repository) == []
    # BUILDKIT_HOST, as buildctl reads it; a build that keeps nothing says so in one line
    kept = cli("compimg", ["build", "--secret", f"id=token,src={secret}"], project.context,
               {**NO_NETWORK, "BUILDKIT_HOST": service})
    assert kept.returncode == 0, kept.stderr
    warning = [line for line in kept.stderr.splitlines() if "keeps nothing" in line]
    assert warning == [f"warning: building on the BuildKit service at {service} keeps nothing but its cache "
                       "(it has no tag to push); add -o DIR, or --tag REF --push"]


def test_an_unreachable_service_is_one_line_naming_it(make_project: Any) -> None:
    project = make_project(APP, {"greeting.txt": "x\n"})
    result = cli("compimg", ["build", "--buildkit-host", "tcp://127.0.0.1:1", "-o", "out"], project.context, NO_NETWORK)
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert error == ("cannot reach BuildKit at tcp://127.0.0.1:1 (Connection refused); check the address and that "
                     "buildkitd listens there")


def test_tls_to_a_service_and_a_mismatch(make_project: Any, tmp_path: Path) -> None:
    from test_control import _certificates

    ca, cert, key = _certificates(tmp_path)
    project = make_project("NAME a\nFROM scratch\nCOPY f.txt /\n", {"f.txt": "over tls\n"})
    with running("--cert", str(cert), "--key", str(key)) as address:
        good = cli("compimg", ["build", "--buildkit-host", address, "--tlscacert", str(ca), "-o", str(tmp_path / "o")],
                   project.context, NO_NETWORK)
        assert good.returncode == 0, good.stderr
        assert (tmp_path / "o" / "f.txt").read_text() == "over tls\n"
        plain = cli("compimg", ["build", "--buildkit-host", address, "-o", str(tmp_path / "p")], project.context,
                    NO_NETWORK)
        error = plain.stderr.strip().splitlines()[-1]
        assert plain.returncode == 1 and address in error and error.count("\n") == 0, plain.stderr


@pytest.mark.parametrize("args, message", [
    (["--buildkit-host", "http://x"], "write unix:///path/to/buildkitd.sock or tcp://HOST:PORT"),
    (["--tlscert", "/etc/hostname"], "--tlscert is for a BuildKit service"),
    (["--buildkit-host", "tcp://h:1", "--builder", "classic"], "say two things"),
    (["--buildkit-host", "tcp://h:1", "--tlscert", "/etc/hostname"], "--tlscert and --tlskey go together"),
    # refused before connecting (h:1 is nowhere): nothing is sent with a network BuildKit lacks
    (["--buildkit-host", "tcp://h:1", "--network", "bridge"],
     "network 'bridge': BuildKit builds can use only default, none, host"),
])
def test_service_settings_written_wrong_are_one_line(make_project: Any, args: list[str], message: str) -> None:
    project = make_project("NAME a\nFROM scratch\n")
    result = cli("compimg", ["build", *args], project.context, NO_NETWORK)
    assert result.returncode == 1 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
