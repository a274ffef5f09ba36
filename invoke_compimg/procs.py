"""Who made a temporary container or folder, and whether that process is still alive, so
that leftovers of killed runs can be told from what a run going on still uses."""

from __future__ import annotations

import os
import socket
import time

STALE_FOREIGN_SECONDS = 3600  # another machine's leftovers are judged by age


def owner() -> str:
    """`<host>:<pid>` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def owner_gone(value: str, created: float) -> bool:
    """Is the process named by an `owner()` value gone (or, on another host, long ago)?"""
    host, _, pid = value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return time.time() - created > STALE_FOREIGN_SECONDS
    return not alive(int(pid))
