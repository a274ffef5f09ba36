"""Containers we make: never-started ones to copy files out of an image, and the labels that
tell whose they are, so leftovers of killed runs can be removed and nothing else."""

from __future__ import annotations

import contextlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

from ..procs import owner, owner_gone
from ..records import record
from .client import Engine

LABEL_PROJECT = "compimg.project"  # the project an image or container belongs to
LABEL_TEMPORARY = "compimg.temporary"  # containers we create only to copy files out or
# for a shell; the value says who made it (`procs.owner()`), so a later run can tell
# leftovers of a killed run from containers that a run going on right now still uses.

NEVER_RUN = ["/compimg-container-is-never-started"]
DATA_CHUNK = 1 << 20


def labels(project: str) -> dict[str, str]:
    """The labels of a temporary container made for `project` by this process."""
    return {LABEL_TEMPORARY: owner(), LABEL_PROJECT: project}


def with_label(engine: Engine, label: str) -> list[dict[str, Any]]:
    with engine.errors("listing containers"):
        return list(engine.api.containers(all=True, filters={"label": label}))


def remove(engine: Engine, container: str) -> None:
    from .sdk import docker

    with engine.errors("removing a temporary container"), contextlib.suppress(docker.errors.NotFound):
        engine.api.remove_container(container, force=True, v=True)


def reap_leftovers(engine: Engine, project: str | None = None) -> int:
    """Remove temporary containers left by killed runs (of `project`, or of any project);
    never those of a run that is still going on."""
    label = LABEL_TEMPORARY if project is None else f"{LABEL_PROJECT}={project}"
    removed = 0
    for container in with_label(engine, label):
        value = (container.get("Labels") or {}).get(LABEL_TEMPORARY)
        if value is not None and owner_gone(value, float(container.get("Created", 0))):
            remove(engine, container["Id"])
            removed += 1
    return removed


@contextlib.contextmanager
def stopped_container(engine: Engine, image_id: str, project: str) -> Iterator[str]:
    """A container created from `image_id` and never started (so nothing in the image runs);
    removed when the block ends, however it ends."""
    with engine.errors("creating a container to copy from"):
        created = engine.api.create_container(
            image_id, command=NEVER_RUN, entrypoint=[], network_disabled=True, labels=labels(project),
            name=f"compimg-tmp-{uuid.uuid4().hex[:12]}",
        )
    container = created["Id"]
    try:
        yield container
    finally:
        remove(engine, container)


@contextlib.contextmanager
def archive_of(engine: Engine, container: str, path: str) -> Iterator[tarfile.TarFile]:
    """The tar stream of `path` in the container, the way `docker cp` reads it, as a
    stream-mode TarFile. FileNotFoundError when there is no such path.

    This is the SDK's `get_archive` with the response kept, so that leaving the block
    (done, refused, Ctrl-C) closes the connection: the engine holds the container while it
    streams, and would otherwise block its removal until the whole archive was read."""
    with engine.errors(f"copying {path}"):
        response = engine.get_stream("/containers/{0}/archive", container, params={"path": path})
    try:
        if response.status_code == 404:
            raise FileNotFoundError(path)
        with engine.errors(f"copying {path}"):
            engine.raise_for_status(response)
            with open_tar_stream(response.iter_content(DATA_CHUNK, decode_unicode=False)) as archive:
                yield archive
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


@record(frozen=False)
class Attached:
    """A started container with our terminal's streams attached to it."""

    engine: Engine
    container: str
    tty: bool
    _socket: Any

    @property
    def input(self) -> Any:
        """The socket to write the container's stdin to (`shutdown(1)` ends it)."""
        return getattr(self._socket, "_sock", self._socket)

    def output(self) -> Iterator[tuple[bool, bytes]]:
        """(is stderr, bytes) as the container writes them: the SDK's `frames_iter` splits the
        streams, which the engine multiplexes when there is no TTY."""
        from .sdk import docker

        for stream, payload in docker.utils.socket.frames_iter(self._socket, self.tty):
            yield stream == docker.utils.socket.STDERR, payload

    def wait(self) -> int:
        with self.engine.errors("waiting for the shell"):
            return int(self.engine.api.wait(self.container)["StatusCode"])


@contextlib.contextmanager
def attached(engine: Engine, image_id: str, command: list[str], project: str, *, tty: bool) -> Iterator[Attached]:
    """A throwaway container of `image_id` running `command`, stdin open and attached (a TTY
    when `tty`); removed when the block ends, however it ends."""
    api = engine.api
    with engine.errors("starting the shell"):
        container = api.create_container(
            image_id, command=command, entrypoint=[], tty=tty, stdin_open=True, labels=labels(project),
            name=f"compimg-shell-{uuid.uuid4().hex[:12]}",
        )["Id"]
    try:
        with engine.errors("starting the shell"):
            socket_io = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            api.start(container)
        yield Attached(engine, container, tty, socket_io)
    finally:
        remove(engine, container)
