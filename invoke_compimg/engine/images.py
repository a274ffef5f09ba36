"""Images on the engine: inspect, name, pull, push, remove."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import EngineError
from ..names import normalise_ref, split_ref
from .client import Engine


def inspect(engine: Engine, ref: str) -> dict[str, Any] | None:
    """The engine's description of image `ref`, or None when there is no such image (asked
    without the SDK on a unix socket: an unchanged build asks little else)."""
    with engine.errors(f"inspecting {ref}"):
        found = engine.get_json("/images/{0}/json", ref)
    return None if found is None else dict(found)


def image_id_of(engine: Engine, ref: str) -> str | None:
    found = inspect(engine, ref)
    return None if found is None else str(found["Id"])


def image_size(engine: Engine, image_id: str) -> int:
    found = inspect(engine, image_id)
    if found is None:
        raise EngineError(f"inspecting {image_id[:19]}: the image is gone (removed by someone else?)")
    return int(found["Size"])


def onbuild_history(engine: Engine, image_id: str) -> tuple[str, ...]:
    """ONBUILD triggers recorded in an image's history, oldest first."""
    with engine.errors(f"reading the history of {image_id[:19]}"):
        history = engine.api.history(image_id)
    found = []
    for entry in reversed(history or []):
        created = str(entry.get("CreatedBy") or "")
        _, marker, trigger = created.partition("ONBUILD ")
        if marker and "#(nop)" in created[: created.find("ONBUILD")]:
            found.append(trigger.strip())
    return tuple(found)


def tag(engine: Engine, image_id: str, ref: str) -> None:
    repository, tag_ = split_ref(ref)
    with engine.errors(f"tagging {ref}"):  # (the query as the SDK's `tag(..., force=True)` sends it)
        engine.request("POST", "/images/{0}/tag", image_id,
                       params={"tag": tag_ or "latest", "repo": repository, "force": "1"}, none_for=())


def untag(engine: Engine, ref: str) -> bool:
    """Remove one name; the image goes too once no name or child image holds it. The last
    name of an image a container uses stays (the engine refuses it without force, 409
    Conflict), as does a name already gone: False then."""
    return _removed(engine, ref, f"removing {ref}")


def remove_unnamed(engine: Engine, image_id: str) -> bool:
    """Remove an image nothing names. One still in use (a container, a child image: the
    engine answers 409 Conflict) or already gone stays as it is; False then."""
    return _removed(engine, image_id, f"removing {image_id[:19]}")


def _removed(engine: Engine, ref: str, what: str) -> bool:
    with engine.errors(what):  # (the query as the SDK's `remove_image(ref)` sends it)
        return engine.request("DELETE", "/images/{0}", ref, params={"force": "False", "noprune": "False"},
                              none_for=(404, 409)) is not None  # None: already gone, or still in use


def tags_in_repository(engine: Engine, repository: str) -> list[tuple[str, str]]:
    """(image ID, tag as the engine spells it) for every tag of `repository` (compared in
    normalised form: Podman answers `docker.io/compimg/...`)."""
    listed = {"only_ids": "0", "all": "0"}  # (the query as the SDK's `images(name=...)` sends it)
    with engine.errors("listing images"):
        images = engine.get_json("/images/json", params={
            **listed, "filters": json.dumps({"reference": [repository]})}) or []
        if not images:  # engines that match `name` only against their own spelling
            images = [i for i in engine.get_json("/images/json", params=listed) or []
                      if any(normalise_ref(t).startswith(repository + ":") for t in i.get("RepoTags") or [])]
    return [(image["Id"], tag) for image in images for tag in image.get("RepoTags") or []
            if normalise_ref(tag).startswith(repository + ":")]


def pull(engine: Engine, ref: str) -> None:
    """Pull `ref` through the engine (with the credentials the SDK finds for it)."""
    repository, tag_ = split_ref(ref)
    with engine.errors(f"pulling {ref}"):
        for message in engine.api.pull(repository, tag=tag_ or "latest", stream=True, decode=True):
            if "error" in message:
                raise EngineError(f"pulling {ref}: {message['error']}; check the name, or log in "
                                  "to its registry (docker login)")


_PUSHED_DIGEST = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")


def push(engine: Engine, ref: str, on_line: Callable[[str], None]) -> str:
    """Push `ref`; return the digest the registry gave it (`sha256:...`). Each progress
    message is a line to `on_line`."""
    repository, tag_ = split_ref(ref)
    digest = ""
    with engine.errors(f"pushing {ref}"):
        for message in engine.api.push(repository, tag=tag_ or "latest", stream=True, decode=True):
            if "error" in message:
                raise EngineError(f"pushing {ref}: {message['error']}")
            aux = message.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status = message.get("status")
            found = _PUSHED_DIGEST.search(str(status or ""))
            if found and not digest:  # Podman says it only in words: `v1: digest: sha256:... size: N`
                digest = found.group(1)
            if status:
                layer = message.get("id")
                progress = message.get("progress") or ""
                on_line(f"{layer + ': ' if layer else ''}{status} {progress}".rstrip())
    return digest


def usable_cache_sources(engine: Engine, refs: tuple[str, ...], on_line: Callable[[str], None]) -> tuple[str, ...]:
    """The `--cache-from` refs the classic builder can use. It reads only images the engine
    holds (BuildKit fetches a ref's inline cache from its registry itself), so those it lacks
    are pulled first, once per Engine; one that cannot be pulled is left out with one line,
    as BuildKit does, and the build goes on without it."""
    usable: list[str] = []
    for ref in refs:
        def fetch(ref: str = ref) -> str | None:
            if inspect(engine, ref) is not None:
                return None
            on_line(f"pulling cache source {ref}")
            try:
                pull(engine, ref)
            except EngineError as exc:
                on_line(f"cache source {ref} not used: {exc}")
                return str(exc)
            return None

        if engine.remember(f"cache source {ref}", fetch) is None:
            usable.append(ref)
    return tuple(usable)
