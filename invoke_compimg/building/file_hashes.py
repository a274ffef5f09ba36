"""The content hashes of a context's files, remembered between runs, as git's index does: a
file whose path, size, modification and change times and inode are as they were when it was
hashed is not read again. An unchanged build then stats its files and reads none.

The record lives in the user's cache folder ($XDG_CACHE_HOME/compimg, else ~/.cache/compimg),
one file per context folder, and may be deleted at any time. It can never make a wrong
reuse: a file is remembered only if it had not been modified for `SETTLED_SECONDS` when it
was hashed (git's "racily clean" rule: a change within the file system's timestamp
granularity of the hashing could otherwise keep the same times), so any write since moves its
modification time; one that puts the time back (`touch -d`) still moves its change time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

SETTLED_SECONDS = 2.0
FORMAT = 1


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "compimg"


class FileHashes:
    """Content hashes of the files of one context folder (see the module's docstring)."""

    def __init__(self, context: str, folder: Path | None = None) -> None:
        self.root = os.path.abspath(context)
        name = hashlib.sha256(self.root.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.path = (folder or cache_folder()) / f"files-{name}.json"
        self._known: dict[str, list[object]] | None = None
        self._changed = False
        self.read = 0  # files whose content was read this time (for tests and benchmarks)

    def _load(self) -> dict[str, list[object]]:
        if self._known is None:
            try:
                data = json.loads(self.path.read_text())
                ok = isinstance(data, dict) and data.get("format") == FORMAT and data.get("root") == self.root
                self._known = dict(data["files"]) if ok else {}
            except (OSError, ValueError, KeyError, TypeError):
                self._known = {}
        return self._known

    def sha256(self, path: str, stat: os.stat_result) -> str:
        """The hex SHA-256 of the regular file `path` (relative to the context), which `stat`
        describes (an lstat taken just now)."""
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        known = self._load()
        entry = known.get(path)
        if isinstance(entry, list) and entry[:4] == key and isinstance(entry[4], str):
            return entry[4]
        value = sha256_of(os.path.join(self.root, path))
        self.read += 1
        settled = time.time_ns() - int(SETTLED_SECONDS * 1e9)
        if stat.st_mtime_ns < settled:  # any later write moves the time; ctime in the key catches utime
            known[path] = [*key, value]
            self._changed = True
        elif path in known:
            del known[path]
            self._changed = True
        return value

    def save(self) -> None:
        """Write what was learnt (atomically); a cache folder we cannot write is no error."""
        if not self._changed or self._known is None:
            return
        write_json(self.path, {"format": FORMAT, "root": self.root, "files": self._known})
        self._changed = False

    def save_soon(self) -> None:
        """`save` on a thread of its own, which the process waits for at exit: a 2,000-file
        record takes 3 ms to write, which a build spends sending its request instead. Nothing
        may use this object afterwards."""
        if self._changed and self._known is not None:
            threading.Thread(target=self.save, name="compimg-file-hashes").start()


def sha256_of(path: str) -> str:
    """The hex SHA-256 of a file's content (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: object) -> None:
    """Write a cache record atomically; a cache folder we cannot write is no error."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=path.name, dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(data, separators=(",", ":")))  # (C encoder: 3x json.dump's speed)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
