"""Helpers for engine tests: read what an image holds, without the docker CLI."""

from __future__ import annotations

import hashlib
from typing import Any

from invoke_compimg import engine

Entry = tuple[str, str, int, int, int, str]  # name, type, mode, uid, gid, link or sha256


def image_listing(api: Any, image: str, under: str = "") -> dict[str, Entry]:
    """Every entry of the image's filesystem (below `under`): type, mode, owner, link target
    or content hash. The container is created, never started, and removed."""
    listing: dict[str, Entry] = {}
    with engine.stopped_container(api, image, "tests") as container, \
            engine.open_tar_stream(api.export(container)) as archive:
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
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if not k.startswith("compimg.")}
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


def count_containers(api: Any) -> int:
    return len(api.containers(all=True))


def build_native(api: Any, project: Any, tag: str) -> None:
    """The peer: the engine's own multi-stage build of `compimg.parse --format native`."""
    from invoke_compimg import render

    (project.context / "Dockerfile.native").write_text(render.as_native(project.graph))
    for message in api.build(path=str(project.context), dockerfile="Dockerfile.native", tag=tag,
                             rm=True, forcerm=True, decode=True):
        assert "error" not in message, message
