"""A cache shared through a registry, between two engines that share nothing else: the
local engine (A) builds with `--cache-to inline` and pushes; a second dockerd (B, tests/
peers.py), holding only the base images, builds the same project with `--cache-from` and
runs no RUN step. For both builders: BuildKit reads the inline cache from the registry
itself; the classic builder needs the images on the engine, which `engine.build` pulls."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import docker
import peers
import pytest
from conftest import ROOT, cli

pytestmark = pytest.mark.engine

# The peers' fixtures, bound here so pytest finds them (a plain import would read as unused).
registry = peers.registry
second_engine = peers.second_engine

# Slow RUN steps (5 s of sleep in all) that say when they run; `{token}` keeps A from
# reusing its own cache of earlier runs.
DOCKERFILE = """\
NAME build
FROM golang:1.19
COPY . .
RUN echo ran-build-step {token} && sleep 3 && go build -o /go/bin/app .

NAME run
FROM busybox
WORKDIR /app
COPY build:/go/bin/app .
RUN echo ran-run-step {token} && sleep 2 && ./app > /app/said
CMD ["./app"]
"""


def _project(folder: Path, token: str) -> Path:
    shutil.copytree(ROOT / "examples/hello-go", folder)
    (folder / "Dockerfile").write_text(DOCKERFILE.format(token=token))
    return folder


def _compimg(args: list[str], cwd: Path, host: str | None) -> tuple[subprocess.CompletedProcess[str], float]:
    """The run, on engine `host` (None: the local one), and how long it took."""
    started = time.monotonic()
    result = cli("compimg", args, cwd, {"DOCKER_HOST": host}, timeout=600)
    return result, time.monotonic() - started


def _run_steps(output: str) -> dict[str, set[bool]]:
    """Each RUN step of a plain progress log -> was it a cache hit (`#N CACHED`), for each
    time it shows (BuildKit: a stage in two solves, e.g. a tagged stage, shows twice)."""
    steps = re.findall(r"^(\[[^\]]+\] #\d+) \[[^\]]+\] (RUN .*)$", output, re.MULTILINE)
    found: dict[str, set[bool]] = {}
    for step, text in steps:  # `[unit] #N`: BuildKit numbers each solve's steps from 1
        found.setdefault(text, set()).add(f"\n{step} CACHED\n" in f"\n{output}")
    return found


def _only_base_images(remote: docker.APIClient) -> None:
    """B as the fixture made it: the stand-in base images, no build cache."""
    for _ in range(3):  # an image may hold another's parent: again, until none is left
        for image in remote.images():
            if not set(image.get("RepoTags") or []) & set(peers.STAND_INS):
                with contextlib.suppress(docker.errors.APIError):
                    remote.remove_image(image["Id"], force=True)
    remote.prune_images()
    remote.prune_builds()


@pytest.mark.parametrize("which", ["classic", "buildkit"])
def test_cache_from_a_registry_on_another_engine(second_engine: str, registry: str, api,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path, unique: str, which: str) -> None:
    remote = docker.APIClient(base_url=second_engine, version="auto")
    build_ref, app_ref = f"{registry}/{unique}/build:v1", f"{registry}/{unique}/app:v1"
    a_project = _project(tmp_path / "a" / "app", unique)
    b_project = _project(tmp_path / "b" / "app", unique)
    try:
        _only_base_images(remote)
        # 1. A builds with the cache embedded and pushes both stages' images.
        a, a_seconds = _compimg(["build", "--builder", which, "--cache-to", "inline", "--tag", f"build={build_ref}",
                                 "--tag", app_ref, "--push", "--push-all", "--progress", "plain"], a_project, None)
        assert a.returncode == 0, a.stderr
        assert f"pushed {build_ref}@sha256:" in a.stdout and f"pushed {app_ref}@sha256:" in a.stdout
        ran = _run_steps(a.stdout)
        assert len(ran) == 2 and all(False in hits for hits in ran.values()), a.stdout  # each ran once
        assert "] ran-build-step" in a.stdout
        # 2. B holds only the base images and shares nothing with A but the registry.
        assert {t for i in remote.images() for t in i.get("RepoTags") or []} == set(peers.STAND_INS)
        b, b_seconds = _compimg(["build", "--builder", which, "--cache-from", build_ref, "--cache-from", app_ref,
                                 "--progress", "plain"], b_project, second_engine)
        assert b.returncode == 0, b.stderr
        # 3. No RUN step ran on B: each is a cache hit, none printed anything; B is faster.
        steps = _run_steps(b.stdout)
        assert len(steps) == 2 and all(hits == {True} for hits in steps.values()), b.stdout
        assert "] ran-build-step" not in b.stdout and "] ran-run-step" not in b.stdout, b.stdout
        print(f"{which}: A built and pushed in {a_seconds:.1f}s, B built in {b_seconds:.1f}s")
        assert b_seconds < a_seconds, (a_seconds, b_seconds)
        # The image B made works.
        final = remote.create_container(f"compimg/{_slug(b_project)}:run", network_disabled=True)
        try:
            remote.start(final)
            assert remote.wait(final, timeout=60)["StatusCode"] == 0
            assert remote.logs(final) == "Hello, 世界\n".encode()
        finally:
            remote.remove_container(final, force=True)
    finally:
        _compimg(["clean"], a_project, None)
        for ref in (build_ref, app_ref):
            if api.images(name=ref.rsplit(":", 1)[0]):
                api.remove_image(ref)
        _only_base_images(remote)
        remote.close()


def _slug(folder: Path) -> str:
    from invoke_compimg.building.project import project_slug

    return project_slug(folder / "Dockerfile", folder)
