"""`--secret`, `--ssh` and `--output` as `settings.resolve` reads them (building/specs.py): the
forms `docker build` accepts, and each mistake as one line. Pure: no engine."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from invoke_compimg.building import settings, specs
from invoke_compimg.building.specs import OutputSpec, SecretSpec, SshSpec
from invoke_compimg.dockerfile.parse import parse_text
from invoke_compimg.errors import UserError

GRAPH = parse_text("NAME build\nFROM busybox\nRUN true\n", "Dockerfile")


def resolve(config: dict[str, Any] | None = None, **flags: Any) -> settings.Settings:
    return settings.resolve(GRAPH, config, target="build", **flags)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    """A listening unix socket, where an ssh agent's would be."""
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        yield str(path)


# --- --secret ------------------------------------------------------------------------------

def test_secret_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.setenv("TOKEN_VAR", "t")
    found = resolve(secrets=[f"id=token,src={token}", "id=API_KEY", "id=other,env=TOKEN_VAR",
                             "id=typed,type=env,source=TOKEN_VAR", f"id=long,source={token}"]).secrets
    assert found == (SecretSpec("token", path=str(token)), SecretSpec("API_KEY", env="API_KEY"),
                     SecretSpec("other", env="TOKEN_VAR"), SecretSpec("typed", env="TOKEN_VAR"),
                     SecretSpec("long", path=str(token)))
    assert "s3cret" not in repr(found) and "src=" in repr(found[0]) and "env=" in repr(found[1])


def test_a_secret_flag_replaces_the_configured_one_of_its_id(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("a")
    second.write_text("b")
    found = resolve({"secrets": [f"id=x,src={first}"]}, secrets=[f"id=x,src={second}"]).secrets
    assert found == (SecretSpec("x", path=str(second)),)


@pytest.mark.parametrize(("value", "message"), [
    ("id=x,src", "--secret id=x,src: 'src' is not KEY=VALUE"),
    ("id=x,colour=red", "--secret id=x,colour=red: unknown key 'colour'; write id=ID,src=PATH or id=ID,env=VAR"),
    ("src=/etc/hostname", "--secret src=/etc/hostname: give the secret an id (id=ID), the name "
                          "RUN --mount=type=secret,id=ID uses"),
    ("id=x,type=ssh", "--secret id=x,type=ssh: type is file or env"),
    ("id=x,src=/etc/hostname,env=HOME", "--secret id=x,src=/etc/hostname,env=HOME: give src=PATH or env=VAR, not both"),
    ("id=x,src=/nonexistent/token", "--secret id=x,src=/nonexistent/token: /nonexistent/token is not a file; give the "
                                    "path of the file that holds it"),
    ("id=COMPIMG_UNSET_SECRET", "--secret id=COMPIMG_UNSET_SECRET: no src=PATH, and the environment has no "
                                "COMPIMG_UNSET_SECRET; write id=COMPIMG_UNSET_SECRET,src=PATH or export "
                                "COMPIMG_UNSET_SECRET"),
])
def test_secret_mistakes_are_one_line(value: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        resolve(secrets=[value])
    assert str(caught.value) == message


def test_the_same_id_twice_in_one_list_is_a_mistake() -> None:
    with pytest.raises(UserError, match=r"^--secret id=a is given twice; keep one$"):
        specs.unique_ids([SecretSpec("a", env="X"), SecretSpec("a", env="Y")], "--secret")
    specs.unique_ids([SecretSpec("a", env="X"), SecretSpec("b", env="Y")], "--secret")


# --- --ssh ---------------------------------------------------------------------------------

def test_ssh_default_is_the_agent_of_ssh_auth_sock(agent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    assert resolve(ssh=["default"]).ssh == (SshSpec("default", (agent,)),)
    assert resolve(ssh=[f"work={agent}"]).ssh == (SshSpec("work", (agent,)),)


@pytest.mark.parametrize(("value", "message"), [
    ("=x", "--ssh =x: write default, or ID=SOCKET"),
    ("default", "--ssh default: no agent socket given and SSH_AUTH_SOCK is not set; start ssh-agent "
                "(eval $(ssh-agent); ssh-add), or write default=/path/to/agent.sock"),
    ("work=/nonexistent/agent.sock", "--ssh work=/nonexistent/agent.sock: /nonexistent/agent.sock does not exist; "
                                     "give an ssh agent's socket"),
    ("work=/a.sock,/b.sock", "--ssh work=/a.sock,/b.sock: one agent socket per id; load the keys into one agent "
                             "(ssh-add), or give each socket an id of its own (--ssh a=SOCK1 --ssh b=SOCK2)"),
])
def test_ssh_mistakes_are_one_line(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(UserError) as caught:
        resolve(ssh=[value])
    assert str(caught.value) == message


def test_a_key_file_is_not_an_agent(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not an agent")
    with pytest.raises(UserError) as caught:
        resolve(ssh=[f"default={key}"])
    assert str(caught.value) == (f"--ssh default={key}: {key} is a file; load the key into an agent (ssh-add {key}) "
                                 "and give the agent's socket (--ssh default=$SSH_AUTH_SOCK)")


def test_a_socket_nobody_answers_is_not_an_agent(tmp_path: Path) -> None:
    """BuildKit leaves a step without the socket when the agent check fails, and says nothing:
    so a socket left by an agent that is gone is refused here, in one line."""
    import socket

    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(path)  # bound, never listening: as a dead agent leaves its socket
    with pytest.raises(UserError) as caught:
        resolve(ssh=[f"default={path}"])
    assert str(caught.value) == (f"--ssh default={path}: no ssh agent answers at {path} (Connection refused); "
                                 "start one (eval $(ssh-agent); ssh-add) and give its socket")
    with socket.socket(socket.AF_UNIX) as agent:
        alive = str(tmp_path / "alive.sock")
        agent.bind(alive)
        agent.listen(1)
        assert resolve(ssh=[f"default={alive}"]).ssh[0].paths == (alive,)


# --- --output ------------------------------------------------------------------------------

def test_output_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve(output="out").output == OutputSpec("local", str(tmp_path / "out"))
    assert resolve(output="type=local,dest=dir").output == OutputSpec("local", str(tmp_path / "dir"))
    assert resolve(output="type=tar,dest=img.tar").output == OutputSpec("tar", str(tmp_path / "img.tar"))
    assert resolve(output="dest=~/x").output == OutputSpec("local", os.path.expanduser("~/x"))
    assert resolve({"output": "from-config"}).output == OutputSpec("local", str(tmp_path / "from-config"))
    assert resolve().output is None


@pytest.mark.parametrize(("value", "message"), [
    ("type=registry,dest=x", "--output type=registry,dest=x: type 'registry' is not supported here; use local or tar "
                             "(or --tag and --push for an image)"),
    ("type=tar", "--output type=tar: give dest=PATH"),
    ("type=local,dest", "--output type=local,dest: 'dest' is not KEY=VALUE"),
])
def test_output_mistakes_are_one_line(value: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        resolve(output=value)
    assert str(caught.value) == message


def test_an_empty_output_is_a_mistake() -> None:
    with pytest.raises(UserError) as caught:
        specs.parse_output("")
    assert str(caught.value) == "--output needs a value: write --output DIR or --output type=local,dest=DIR"


# --- --cache-to, --cache-from, --buildkit-host ---------------------------------------------------

def test_cache_forms() -> None:
    assert resolve(cache_to="inline").cache_to == specs.CacheSpec("inline")
    assert resolve(cache_to="type=inline").cache_to == specs.CacheSpec("inline")
    assert resolve(cache_to="type=registry,ref=r.example/app:cache,mode=max").cache_to == specs.CacheSpec(
        "registry", "r.example/app:cache", "max")
    assert resolve(cache_from=["r.example/app:1", "type=registry,ref=r.example/app:cache"]).cache_from == (
        "r.example/app:1", "r.example/app:cache")


@pytest.mark.parametrize(("flags", "message"), [
    ({"cache_to": "type=local,dest=x"},
     "--cache-to type=local,dest=x: write inline, or type=registry,ref=REF[,mode=max]"),
    ({"cache_to": "type=registry"}, "--cache-to type=registry: give ref=REF, the image the cache is pushed to"),
    ({"cache_to": "type=registry,ref=r,mode=all"}, "--cache-to type=registry,ref=r,mode=all: mode is min or max"),
    ({"cache_from": ["type=local,src=x"]}, "--cache-from type=local,src=x: write REF, or type=registry,ref=REF"),
])
def test_cache_mistakes_are_one_line(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        resolve(**flags)
    assert str(caught.value) == message


def test_a_buildkit_service_from_the_flag_or_buildkit_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDKIT_HOST", raising=False)
    assert resolve().buildkit is None
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    assert resolve(buildkit_host="tcp://buildkitd:1234", tlscacert=str(ca)).buildkit == specs.ServiceSpec(
        "tcp://buildkitd:1234", str(ca))
    monkeypatch.setenv("BUILDKIT_HOST", "unix:///run/buildkit/buildkitd.sock")
    assert resolve().buildkit == specs.ServiceSpec("unix:///run/buildkit/buildkitd.sock")


@pytest.mark.parametrize(("flags", "message"), [
    ({"buildkit_host": "http://x"}, "--buildkit-host http://x: write unix:///path/to/buildkitd.sock or tcp://HOST:PORT"),
    ({"buildkit_host": "tcp://x"}, "--buildkit-host tcp://x: write tcp://HOST:PORT"),
    ({"buildkit_host": "unix:///b.sock", "tlscacert": "/etc/hostname"},
     "--buildkit-host unix:///b.sock: TLS files are for tcp:// addresses"),
    ({"buildkit_host": "tcp://x:1", "tlskey": "/etc/hostname"},
     "--buildkit-host: --tlscert and --tlskey go together (your client certificate and its key)"),
    ({"buildkit_host": "tcp://x:1", "tlscacert": "/nonexistent/ca.pem"},
     "--tlscacert /nonexistent/ca.pem: no such file"),
    ({"tlscert": "/etc/hostname"}, "--tlscert is for a BuildKit service; give --buildkit-host (or BUILDKIT_HOST)"),
])
def test_service_mistakes_are_one_line(flags: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDKIT_HOST", raising=False)
    with pytest.raises(UserError) as caught:
        resolve(**flags)
    assert str(caught.value) == message


# --- which registries a BuildKit service may ask logins for ------------------------------------

@pytest.mark.parametrize(("ref", "hosts"), [
    ("busybox", ("docker.io", "index.docker.io", "registry-1.docker.io")),
    ("library/golang:1.22", ("docker.io", "index.docker.io", "registry-1.docker.io")),
    ("docker.io/me/app", ("docker.io", "index.docker.io", "registry-1.docker.io")),
    ("registry.example:5000/team/base:1", ("registry.example:5000",)),
    ("localhost/x", ("localhost",)),
    ("ghcr.io/o/r@sha256:" + "a" * 64, ("ghcr.io",)),
])
def test_registry_hosts_of_a_reference(ref: str, hosts: tuple[str, ...]) -> None:
    from invoke_compimg.names import registry_hosts

    assert registry_hosts(ref) == hosts


def test_a_service_build_offers_only_the_logins_it_uses(tmp_path: Path) -> None:
    """A BuildKit service is another machine: its session answers credentials only for the
    registries the build names (bases, --cache-from/--cache-to, pushed tags, # syntax=)."""
    from invoke_compimg.builders.buildkit_service import BuildKitServiceBuilder
    from invoke_compimg.building.project import Project
    from invoke_compimg.building.reuse import ExternalImages
    from invoke_compimg.engine.client import Engine
    from invoke_compimg.progress import QuietReporter

    (tmp_path / "Dockerfile").write_text("# syntax=frontends.example/dockerfile:1\n"
                                         "FROM registry.example:5000/go AS build\nFROM scratch AS run\n"
                                         "COPY --from=build /app /\nCOPY --from=ghcr.io/o/tools /t /\n")
    project = Project(tmp_path / "Dockerfile", tmp_path)
    chosen = settings.resolve(project.graph, None, target="run", buildkit_host="tcp://127.0.0.1:1",
                              tags=["run=cache.example/me/app:1"], cache_from=["cache.example/me/app:cache"])
    builder = BuildKitServiceBuilder(Engine({"DOCKER_HOST": "unix:///nonexistent"}), project, project.graph, chosen,
                                     QuietReporter(io.StringIO(), io.StringIO()), ExternalImages())
    [unit] = builder.units(list(project.graph.stages), ["run"])
    assert builder.registry_hosts(unit) == {"registry.example:5000", "ghcr.io", "cache.example",
                                            "frontends.example"}
