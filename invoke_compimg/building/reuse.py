"""Whole-unit skips: a stage (classic) or a target (BuildKit) whose inputs are unchanged
since an earlier build is not sent to the engine again.

The inputs digest covers everything the result depends on: the text sent (with the exact
image IDs of the stages it reads), the IDs of external images, the build args it is sent,
and the names, modes and contents of the context files it reads. It is recorded as an image
name, `compimg/<project>:<unit>--I-<digest>`: one inspect finds it, the engine keeps it
exactly as long as the image, and it needs no state outside the engine, which may be
remote or shared by several clients.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..ahead import Ahead
from ..engine import images as engine_images
from ..names import normalise_ref, short_id
from .context import fingerprint
from .project import Project

if TYPE_CHECKING:
    from ..engine.client import Engine


class ExternalImages:
    """IDs and ONBUILD triggers of base and `--from` images, looked up once per build."""

    def __init__(self) -> None:
        self._found: dict[str, dict[str, Any] | None] = {}
        self._history: dict[str, tuple[str, ...]] = {}  # Podman: ONBUILD triggers by ref
        self._lock = threading.Lock()

    def inspect(self, engine: Engine, ref: str) -> dict[str, Any] | None:
        with self._lock:
            if ref in self._found:
                return self._found[ref]
        found = engine_images.inspect(engine, ref)
        with self._lock:
            self._found[ref] = found
        return found

    def forget(self, ref: str) -> None:
        with self._lock:
            self._found.pop(ref, None)
            self._history.pop(ref, None)

    def triggers(self, engine: Engine, ref: str) -> tuple[str, ...]:
        """The image's ONBUILD triggers (`Config.OnBuild`), which run in a stage built on it.
        Podman's inspect always says none: there its history's `ONBUILD` entries stand in (an
        ancestor's triggers that were already run count too: more context is sent, never less)."""
        found = self.inspect(engine, ref)
        config = (found or {}).get("Config") or {}
        if found is None or config.get("OnBuild") or not engine.kind.podman:
            return tuple(config.get("OnBuild") or ())
        with self._lock:
            known = self._history.get(ref)
        if known is None:  # asked for each stage on the image, by planning and by the context
            known = engine_images.onbuild_history(engine, str(found["Id"]))
            with self._lock:
                self._history[ref] = known
        return known


def inputs_digest(engine: Engine, images: ExternalImages, *, kind: str, name: str, text: str,
                  image_refs: Iterable[str], args: Mapping[str, str], context: str,
                  paths: list[str], platforms: Iterable[str] = ()) -> str | None:
    """The digest of a unit's inputs, or None when something cannot be pinned (an image
    that is not on the engine yet: the build will pull it)."""
    digest = hashlib.sha256(f"compimg-inputs-3\0{kind}\0{name}\0{text}\0".encode())
    for ref in image_refs:
        if ref == "scratch":  # no image: nothing to pin
            continue
        found = images.inspect(engine, ref)
        if found is None:
            return None
        digest.update(f"{ref}={found['Id']}\0".encode())
    for key, value in sorted(args.items()):
        digest.update(f"arg {key}={value}\0".encode())
    for platform in platforms:  # the same inputs for another platform are another image
        digest.update(f"platform {platform}\0".encode())
    digest.update(fingerprint(context, paths, save_soon=True).encode())
    # The builder's initial leads the record: each builder retires only its own records, so
    # switching between them does not throw the other's reusable images away.
    return builder_mark(kind) + digest.hexdigest()[:39]


def builder_mark(kind: str) -> str:
    """The letter that leads a builder's records."""
    return kind[0]


def find(engine: Engine, project: Project, name: str, digest: str | None) -> dict[str, Any] | None:
    """The image recorded for `digest`, if the engine still has it."""
    return engine_images.inspect(engine, project.inputs_ref(name, digest)) if digest else None


def record(engine: Engine, project: Project, name: str, digest: str | None, image_id: str,
           names: Iterable[str] = ()) -> None:
    """Name `image_id` as the unit's latest image and as the record of `digest`."""
    have = {normalise_ref(n) for n in names}
    for ref in (project.inputs_ref(name, digest) if digest else None, project.local_ref(name)):
        if ref and ref not in have:
            engine_images.tag(engine, image_id, ref)


def retire(engine: Engine, project: Project, name: str, previous: dict[str, Any] | None,
           image_id: str, keep: str | None, kind: str, listed: Ahead[list[tuple[str, str]]] | None) -> None:
    """`previous` (what the unit's local name pointed to before this build started) is
    superseded by `image_id`, now named: drop its inputs records and, once nothing names
    it, remove it, so rebuilds do not pile up images. Looking before the build, not after,
    keeps images of runs going on at the same time out of this. `listed` is what
    `records_listing` gave for `previous`: a listing only when the builder changed."""
    if previous is None or previous["Id"] == image_id:
        return
    mine = project.inputs_ref(name, builder_mark(kind))
    if listed is None:
        _retire_image(engine, project, name, previous["Id"], previous.get("RepoTags") or [], mine, keep)
        return
    # The name pointed at the other builder's image, which stays reusable: this builder's
    # own superseded image is found by its records.
    for old_id, ref in listed.result():
        if old_id != image_id and normalise_ref(ref).startswith(mine) and normalise_ref(ref) != keep:
            _retire_image(engine, project, name, old_id, [ref], mine, keep)


def records_listing(engine: Engine, project: Project, name: str, previous: dict[str, Any] | None,
                    kind: str) -> Ahead[list[tuple[str, str]]] | None:
    """The project's tags, listed on a thread of its own from now, for `retire` when it will
    need them: when the unit's name holds the other builder's image (its records and none of
    `kind`'s); else None. Listing images costs the engine time in proportion to every image it
    holds (70-120 ms with 880), which a build running meanwhile hides; what it lists is what
    was there before the build, as `previous` is."""
    if previous is None:
        return None
    mine = project.inputs_ref(name, builder_mark(kind))
    names = [normalise_ref(ref) for ref in previous.get("RepoTags") or []]
    if any(n.startswith(mine) for n in names) or not any(n.startswith(project.inputs_ref(name)) for n in names):
        return None
    return Ahead(lambda: engine_images.tags_in_repository(engine, project.repository), "compimg-records")


def superseded_ref(project: Project, name: str, image_id: str) -> str:
    """The name a superseded image of unit `name` keeps while only your names hold it (an
    upper-case letter, as in the records: no stage name can hold it)."""
    return f"{project.repository}:{name[:80]}--S-{short_id(image_id)}"


def is_superseded_ref(project: Project, ref: str) -> bool:
    plain = normalise_ref(ref)
    return plain.startswith(project.repository + ":") and "--S-" in plain


def release(engine: Engine, project: Project, image_id: str) -> None:
    """A name of yours (`--tag`) moved off `image_id`. A superseded image of ours that this
    name held (it carries only our superseded names now) goes with those names, as `retire`
    removes one that nothing names; one a container uses keeps its name (`clean` finds it).
    An image that no name of ours marks is not ours to remove, even when left unnamed."""
    found = engine_images.inspect(engine, image_id)
    refs = (found or {}).get("RepoTags") or []
    if refs and all(is_superseded_ref(project, ref) for ref in refs):
        for ref in refs:
            engine_images.untag(engine, ref)  # the last one removes the image


def _retire_image(engine: Engine, project: Project, name: str, image_id: str, refs: Iterable[str], prefix: str,
                  keep: str | None) -> None:
    for ref in refs:
        # `keep` is the record just given to the new image (a --no-cache rebuild of the
        # same inputs has the same name): removing the name would remove it from there.
        plain = normalise_ref(ref)
        if plain.startswith(prefix) and plain != keep:
            engine_images.untag(engine, ref)
    now = engine_images.inspect(engine, image_id)
    if now is None:
        return
    names = now.get("RepoTags") or []
    if not names:
        engine_images.remove_unnamed(engine, image_id)
    elif all(is_superseded_ref(project, n) for n in names):  # marked earlier; your name has gone since
        for ref in names:
            engine_images.untag(engine, ref)
    elif not any(normalise_ref(n).startswith(project.repository + ":") for n in names):
        # Only names of yours hold it (`--tag`): it stays, with a name of ours that says it is
        # ours and superseded, so it goes when your name moves to a newer build (`release`),
        # and `clean` finds it. Without one it would be left unnamed then, and unfindable.
        engine_images.tag(engine, image_id, superseded_ref(project, name, image_id))
