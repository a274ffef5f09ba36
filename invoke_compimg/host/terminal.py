"""`compimg.shell`: a throwaway container of a stage's image with this terminal attached."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..engine import containers

if TYPE_CHECKING:
    from ..engine.client import Engine


def run_shell(engine: Engine, image_id: str, command: list[str], project: str) -> int:
    """Run `command` in a throwaway container of `image_id` with this terminal attached
    (raw mode when stdin is a terminal); return its exit status. Always removed after."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    with containers.attached(engine, image_id, command, project, tty=interactive) as shell:
        stdin_fd = sys.stdin.fileno()
        with _raw_terminal(stdin_fd if interactive else None):
            # Input on a thread of its own: the output loop below waits on the container.
            threading.Thread(target=_forward_input, args=(stdin_fd, shell.input), daemon=True).start()
            for is_stderr, payload in shell.output():
                target = sys.stderr if is_stderr else sys.stdout
                target.buffer.write(payload)
                target.buffer.flush()
        return shell.wait()


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
