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


SOCKET_PATH_MAX = 107  # bytes of a unix socket's path (sun_path less its NUL), on Linux


def socket_folder(kind: str, longest_name: int = 16) -> str:
    """A fresh private folder (0700) for unix sockets of this process, named after it
    (`compimg-<kind>-<pid>-…`) so that the folders of killed runs are removed here, by the
    next run. In the temporary folder, or in /tmp when that one's path is too long for a
    socket path (`longest_name`: the longest socket name to be made in it)."""
    import shutil
    import tempfile

    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len(f"/compimg-{kind}-{os.getpid()}-xxxxxxxx/") + longest_name > SOCKET_PATH_MAX:
        base = "/tmp"
    prefix = f"compimg-{kind}-"
    try:
        for name in os.listdir(base):
            pid = name[len(prefix):].split("-", 1)[0]
            if name.startswith(prefix) and pid.isdigit() and not alive(int(pid)):
                path = os.path.join(base, name)
                if os.path.isdir(path) and not os.path.islink(path) and os.stat(path).st_uid == os.getuid():
                    shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass  # only tidying
    folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base)
    os.chmod(folder, 0o700)
    return folder
