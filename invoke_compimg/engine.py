"""Every conversation with the Docker engine, through the Docker SDK's low-level API.

Engine and SDK failures are turned into one-line `EngineError`s here, in one place,
keeping the original exception as the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from .context import DOCKERFILE_IN_CONTEXT
from .errors import EngineError
from .names import normalise_ref
from .procs import owner, owner_gone

LABEL_PROJECT = "compimg.project"  # the project an image or container belongs to
LABEL_TEMPORARY = "compimg.temporary"  # containers we create only to copy files out or
# for a shell; the value says who made it (`procs.owner()`), so a later run can tell
# leftovers of a killed run from containers that a run going on right now still uses.

NEVER_RUN = ["/compimg-container-is-never-started"]
DATA_CHUNK = 1 << 20


def connect(version: str = "auto") -> docker.APIClient:
    """A low-level client for the engine named by DOCKER_HOST (TLS settings included)."""
    try:
        api = docker.APIClient(version=version, **docker.utils.kwargs_from_env())
    except docker.errors.DockerException as exc:
        reason = _reason(exc)
        advice = ("ask for access to its socket (e.g. join the `docker` group) or run as root"
                  if reason == "permission denied" else "start Docker, or set DOCKER_HOST to the engine to use")
        raise EngineError(f"cannot reach the Docker engine at {_address()} ({reason}); {advice}") from exc
    return api


def _address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Permission denied", "No such file or directory", "Connection refused",
                   "Name or service not known", "timed out", "Connection broken", "Connection aborted"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:200]


@contextlib.contextmanager
def engine_errors(what: str, *, where: str | None = None, line: int | None = None) -> Iterator[None]:
    """Map SDK and transport errors raised inside the block to one EngineError line
    (`where:line: what: reason`), keeping the original as the cause."""
    try:
        yield
    except EngineError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise EngineError(f"{what}: no such image ({_explanation(exc)})", where=where, line=line) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{what}: {_explanation(exc)}", where=where, line=line) from exc
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
            docker.errors.DockerException) as exc:
        raise EngineError(f"{what}: lost the Docker engine at {_address()} ({_reason(exc)}); "
                          "check that it is running, then retry", where=where, line=line) from exc


def _explanation(exc: docker.errors.APIError) -> str:
    text = exc.explanation if isinstance(exc.explanation, str) else str(exc)
    return " ".join(str(text).split())


@dataclass(frozen=True)
class BuildEvent:
    """One decoded message of a build stream."""

    kind: str  # "log" or "error"
    text: str


def build(api: docker.APIClient, archive: IO[bytes], *, build_args: Mapping[str, str],
          no_cache: bool, network: str | None, cache_from: tuple[str, ...] = (),
          on_event: Callable[[BuildEvent], None]) -> str | None:
    """Send one single-stage build; return the image ID from the `aux` message, or None
    when the stream ended without one (the error events say why)."""
    image_id: str | None = None
    archive.seek(0)
    stream = api.build(
        fileobj=archive, custom_context=True, dockerfile=DOCKERFILE_IN_CONTEXT,
        rm=True, forcerm=True, decode=True, nocache=no_cache, pull=False,
        buildargs=dict(build_args), network_mode=network, cache_from=list(cache_from) or None,
    )
    for message in stream:
        if not isinstance(message, dict):
            continue
        if "error" in message or "errorDetail" in message:
            detail = message.get("errorDetail") or {}
            text = message.get("error") or detail.get("message") or "build failed"
            on_event(BuildEvent("error", str(text)))
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        if isinstance(message.get("stream"), str):
            on_event(BuildEvent("log", message["stream"]))
        elif isinstance(message.get("status"), str):
            on_event(BuildEvent("log", message["status"] + "\n"))
    return image_id


def tag(api: docker.APIClient, image_id: str, ref: str) -> None:
    repository, _, tag_ = _split_ref(ref)
    with engine_errors(f"tagging {ref}"):
        api.tag(image_id, repository, tag_ or "latest", force=True)


def _split_ref(ref: str) -> tuple[str, str, str]:
    """`host:5000/repo:tag` -> (`host:5000/repo`, ':', `tag`); digests are not tags."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ":", ref[colon + 1:]
    return ref, "", ""


def image_id_of(api: docker.APIClient, ref: str) -> str | None:
    found = inspect(api, ref)
    return None if found is None else str(found["Id"])


def inspect(api: docker.APIClient, ref: str) -> dict[str, Any] | None:
    """The engine's description of image `ref`, or None when there is no such image."""
    try:
        return dict(api.inspect_image(ref))
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        raise EngineError(f"inspecting {ref}: {_explanation(exc)}") from exc


def image_size(api: docker.APIClient, image_id: str) -> int:
    with engine_errors(f"inspecting {image_id[:19]}"):
        return int(api.inspect_image(image_id)["Size"])


def reap_leftovers(api: docker.APIClient, project: str | None = None) -> int:
    """Remove temporary containers left by killed runs (of `project`, or of any project);
    never those of a run that is still going on."""
    label = LABEL_TEMPORARY if project is None else f"{LABEL_PROJECT}={project}"
    removed = 0
    for container in containers_with_label(api, label):
        value = (container.get("Labels") or {}).get(LABEL_TEMPORARY)
        if value is not None and owner_gone(value, float(container.get("Created", 0))):
            remove_container(api, container["Id"])
            removed += 1
    return removed


@contextlib.contextmanager
def stopped_container(api: docker.APIClient, image_id: str, project: str) -> Iterator[str]:
    """A container created from `image_id` and never started (so nothing in the image runs);
    removed when the block ends, however it ends."""
    with engine_errors("creating a container to copy from"):
        created = api.create_container(
            image_id, command=NEVER_RUN, entrypoint=[], network_disabled=True,
            labels={LABEL_TEMPORARY: owner(), LABEL_PROJECT: project},
            name=f"compimg-tmp-{uuid.uuid4().hex[:12]}",
        )
    container = created["Id"]
    try:
        yield container
    finally:
        remove_container(api, container)


def remove_container(api: docker.APIClient, container: str) -> None:
    with engine_errors("removing a temporary container"), contextlib.suppress(docker.errors.NotFound):
        api.remove_container(container, force=True, v=True)


@contextlib.contextmanager
def archive_of(api: docker.APIClient, container: str, path: str) -> Iterator[Iterator[bytes]]:
    """The tar stream of `path` in the container, the way `docker cp` reads it.

    This is the SDK's `get_archive` with the response kept, so that leaving the block
    (done, refused, Ctrl-C) closes the connection: the engine holds the container while it
    streams, and would otherwise block its removal until the whole archive was read."""
    with engine_errors(f"copying {path}"):
        response = api._get(api._url("/containers/{0}/archive", container), params={"path": path},
                            stream=True, headers={"Accept-Encoding": "identity"})
    try:
        if response.status_code == 404:
            raise FileNotFoundError(path)
        with engine_errors(f"copying {path}"):
            api._raise_for_status(response)
        yield response.iter_content(DATA_CHUNK, decode_unicode=False)
    finally:
        response.close()


def open_tar_stream(chunks: Iterator[bytes]) -> tarfile.TarFile:
    return tarfile.open(fileobj=_ChunkReader(chunks), mode="r|")


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def tags_in_repository(api: docker.APIClient, repository: str) -> list[tuple[str, str]]:
    """(image ID, tag as the engine spells it) for every tag of `repository` (compared in
    normalised form: Podman answers `docker.io/compimg/...`)."""
    with engine_errors("listing images"):
        images = api.images(name=repository)
        if not images:  # engines that match `name` only against their own spelling
            images = [i for i in api.images() if any(normalise_ref(t).startswith(repository + ":")
                                                     for t in i.get("RepoTags") or [])]
    return [(image["Id"], tag) for image in images for tag in image.get("RepoTags") or []
            if normalise_ref(tag).startswith(repository + ":")]


def containers_with_label(api: docker.APIClient, label: str) -> list[dict[str, Any]]:
    with engine_errors("listing containers"):
        return list(api.containers(all=True, filters={"label": label}))


def remove_unnamed(api: docker.APIClient, image_id: str) -> None:
    """Remove an image nothing names; one still in use (a container, a child image) stays."""
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        api.remove_image(image_id, force=False, noprune=False)


def untag(api: docker.APIClient, ref: str) -> None:
    """Remove one name; the image goes too once no name or child image holds it."""
    with engine_errors(f"removing {ref}"), contextlib.suppress(docker.errors.NotFound):
        api.remove_image(ref, force=False, noprune=False)


def push(api: docker.APIClient, ref: str, on_event: Callable[[BuildEvent], None]) -> str:
    """Push `ref`; return the digest the registry gave it (`sha256:...`)."""
    repository, _, tag_ = _split_ref(ref)
    digest = ""
    with engine_errors(f"pushing {ref}"):
        for message in api.push(repository, tag=tag_ or "latest", stream=True, decode=True):
            if "error" in message:
                raise EngineError(f"pushing {ref}: {message['error']}")
            aux = message.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status = message.get("status")
            if status:
                layer = message.get("id")
                progress = message.get("progress") or ""
                on_event(BuildEvent("log", f"{layer + ': ' if layer else ''}{status} {progress}".rstrip() + "\n"))
    return digest
