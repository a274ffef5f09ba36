"""`compimg.shell`: a throwaway container of a stage's image with this terminal attached."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Iterator

from ..engine.client import LABEL_PROJECT, LABEL_TEMPORARY, engine_errors, remove_container
from ..engine.sdk import docker
from ..procs import owner


def run_shell(api: docker.APIClient, image_id: str, command: list[str], project: str) -> int:
    """Run `command` in a throwaway container of `image_id` with this terminal attached
    (raw mode when stdin is a terminal); return its exit status. Always removed after."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    with engine_errors("starting the shell"):
        container = api.create_container(
            image_id, command=command, entrypoint=[], tty=interactive, stdin_open=True,
            labels={LABEL_TEMPORARY: owner(), LABEL_PROJECT: project},
            name=f"compimg-shell-{uuid.uuid4().hex[:12]}",
        )["Id"]
    try:
        with engine_errors("starting the shell"):
            socket_io = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            api.start(container)
        sock = getattr(socket_io, "_sock", socket_io)
        stdin_fd = sys.stdin.fileno()
        with _raw_terminal(stdin_fd if interactive else None):
            # Input on a thread of its own; the SDK's frames_iter splits the output (the
            # engine multiplexes stdout and stderr when there is no TTY).
            threading.Thread(target=_forward_input, args=(stdin_fd, sock), daemon=True).start()
            for stream, payload in docker.utils.socket.frames_iter(socket_io, interactive):
                target = sys.stderr if stream == docker.utils.socket.STDERR else sys.stdout
                target.buffer.write(payload)
                target.buffer.flush()
        with engine_errors("waiting for the shell"):
            return int(api.wait(container)["StatusCode"])
    finally:
        remove_container(api, container)


def _forward_input(fd: int, sock: object) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(fd, 65536):
            sock.sendall(data)  # type: ignore[attr-defined]
        sock.shutdown(1)  # type: ignore[attr-defined]  # SHUT_WR: the command sees end of input


@contextlib.contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
