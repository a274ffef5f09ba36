"""Helpers for engine tests: read what an image holds, without the docker CLI."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from invoke_compimg.engine import containers
from invoke_compimg.engine.client import Engine

T = TypeVar("T")
Entry = tuple[str, str, int, int, int, str]  # name, type, mode, uid, gid, link or sha256


def image_listing(api: Any, image: str, under: str = "") -> dict[str, Entry]:
    """Every entry of the image's filesystem (below `under`): type, mode, owner, link target
    or content hash. The container is created, never started, and removed."""
    listing: dict[str, Entry] = {}
    with containers.stopped_container(Engine(), image, "tests") as container, \
            containers.open_tar_stream(api.export(container)) as archive:
        for member in archive:
            name = member.name.lstrip("./")
            if under and not (name == under or name.startswith(under + "/")):
                continue
            kind = ("dir" if member.isdir() else "sym" if member.issym() else
                    "hard" if member.islnk() else "file" if member.isfile() else "other")
            extra = member.linkname if member.issym() or member.islnk() else ""
            if member.isfile():
                handle = archive.extractfile(member)
                extra = hashlib.sha256(handle.read() if handle else b"").hexdigest()[:16]
            listing[name] = (name, kind, member.mode, member.uid, member.gid, extra)
    return listing


def config_of(api: Any, image: str) -> dict[str, Any]:
    config = api.inspect_image(image)["Config"]
    labels = dict(config.get("Labels") or {})  # ours carry none: compared as they are
    return {
        "Cmd": config.get("Cmd"), "Entrypoint": config.get("Entrypoint"), "Env": config.get("Env"),
        "WorkingDir": config.get("WorkingDir"), "User": config.get("User"),
        "ExposedPorts": config.get("ExposedPorts"), "Labels": labels,
    }


def run_image(api: Any, image: str, command: list[str] | None = None) -> tuple[int, str]:
    """Run a throwaway container without network; (exit status, output)."""
    container = api.create_container(image, command=command, network_disabled=True)
    try:
        api.start(container)
        status = api.wait(container, timeout=300)["StatusCode"]
        return status, api.logs(container).decode()
    finally:
        api.remove_container(container, force=True)


def count_containers(api: Any, project: Any = None, marker: str | None = None) -> int:
    """Containers of this test only, so the count holds while anything else uses the engine:
    those our code made for `project` (by label), and the engine's build containers whose
    command holds `marker` (a unique word the test put in its RUN lines)."""
    found = {c["Id"] for c in api.containers(all=True, filters={"label": f"compimg.project={project.slug}"})} \
        if project is not None else set()
    if marker is not None:
        found |= {c["Id"] for c in api.containers(all=True) if marker in (c.get("Command") or "")}
    return len(found)


# Image IDs (12 hex) the engine's own builds in this process made (`docker_build`): the only
# untagged images the session removes at its end, so another run's are never touched.
MADE_BY_DOCKER_BUILD: set[str] = set()
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12})$", re.M)


def docker_build(api: Any, **kwargs: Any) -> None:
    """`docker build` through the SDK (the classic builder), remembering every image it made:
    the stage images of a multi-stage file are left untagged, as docker build leaves them."""
    for message in api.build(rm=True, forcerm=True, decode=True, **kwargs):
        assert "error" not in message, message
        MADE_BY_DOCKER_BUILD.update(_STEP_IMAGE.findall(message.get("stream") or ""))
        found = (message.get("aux") or {}).get("ID", "")
        if found:
            MADE_BY_DOCKER_BUILD.add(found.removeprefix("sha256:")[:12])


def build_native(api: Any, project: Any, tag: str) -> None:
    """The peer: the engine's own multi-stage build of `compimg.parse --format native`."""
    from invoke_compimg.dockerfile import render

    (project.context / "Dockerfile.native").write_text(render.as_native(project.graph))
    docker_build(api, path=str(project.context), dockerfile="Dockerfile.native", tag=tag)


def build_cache_ids(api: Any) -> set[str]:
    """The IDs of every record in the engine's BuildKit cache."""
    return {record["ID"] for record in api.df().get("BuildCache") or []}


def again_unless_pruned(api: Any, before: set[str], build: Callable[[], T], from_cache: Callable[[T], bool]) -> T:
    """`build()`, a build expected to take steps from BuildKit's cache (`before`: the cache's
    records after the build that filled it). The engine is shared: when the steps did not come
    from the cache and records of `before` are gone (someone pruned BuildKit's cache meanwhile),
    once more, as this build has just filled it again. A miss with nothing pruned stands."""
    result = build()
    if not from_cache(result) and before - build_cache_ids(api):
        result = build()
    return result


class Builder:
    """A build session the way engine tests drive one: plain progress into `out`."""

    def __init__(self, project: Any, settings: Any = None, out: Any = None, builder: str | None = None) -> None:
        import io
        import os
        from dataclasses import replace

        from invoke_compimg.building.settings import Settings
        from invoke_compimg.progress import PlainReporter
        from invoke_compimg.run import BuildRun

        self.project = project
        self.out = out if out is not None else io.StringIO()
        builder = builder or os.environ.get("INVOKE_COMPIMG_BUILDER", "classic")
        settings = replace(settings or Settings(), builder=builder)
        self.session = BuildRun(project, settings, PlainReporter(self.out, self.out))

    @property
    def api(self) -> Any:
        return self.session.api

    @property
    def results(self) -> list[Any]:
        return list(self.session.results.values())

    def build(self, target: str | None = None) -> dict[str, str]:
        try:
            return self.session.build([target or self.project.graph.final.name])
        finally:  # as the tasks do: its connections end with the build (using it again reconnects)
            self.session.close()

    def table(self) -> str:
        from invoke_compimg.progress import format_table

        return format_table(self.session.rows(), self.project.graph.final.name)


def extract_artifact(project: Any, builder: Builder, spec: str, dest: str) -> Any:
    from invoke_compimg.host import artifacts

    stage, _, path = spec.partition(":")
    name = project.stage(stage).name
    image_id = builder.build(name)[name]
    return artifacts.copy_out(builder.session.engine, project, name, image_id, path, dest, builder.session.reporter)


def processes_with(marker: str) -> list[str]:
    """Command lines on this machine that contain `marker` (the test's own processes left
    out): BuildKit runs a RUN step as a child of dockerd, not as a container, so /proc is
    where a step that outlived its build would show."""
    import glob

    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in line and "pytest" not in line and "invoke_compimg.tasks.cli" not in line:
            found.append(line)
    return found
