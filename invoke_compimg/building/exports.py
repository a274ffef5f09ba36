"""What the last `--output` of a build left at its destination, so the same build again need
not solve and write the same files: `docker build -o` solves and writes every time (0.1 s of
Go), which a Python process cannot match on top of its start-up and gRPC's import.

The record holds the build's inputs digest (`reuse.inputs_digest`: the Dockerfile's text,
the pinned base images, the context files read, the args) and a stat of everything under the
destination just after the export: type, mode, size, modification and change times, inode.
A build whose digest is the recorded one, into a destination whose every entry still stats the
same (nothing added, removed, edited, touched or chmod'ed; a file replaced gets a new inode
and change time), holds the files that solve would write again: BuildKit would answer it from
the same cache. An edit within the file system's timestamp granularity of the record could
keep the times, so files changed less than `SETTLED_SECONDS` before the record was made are
also compared by content (git's "racily clean" rule; see file_hashes). Anything else solves
and writes, as `docker build -o` does. A destination of more than `MAX_ENTRIES` entries
(`-o .` in a large tree) is not recorded.

The record lives next to the file hashes (`file_hashes.cache_folder()`), one file per
destination and export type, and may be deleted at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from .file_hashes import SETTLED_SECONDS, cache_folder, sha256_of, write_json

FORMAT = 1
MAX_ENTRIES = 20_000

Snapshot = dict[str, list[int]]


class ExportRecord:
    """The record of one destination (`dest`, a folder for `local`, a file for `tar`)."""

    def __init__(self, dest: str, kind: str, folder: Path | None = None) -> None:
        self.dest = os.path.abspath(dest)
        self.kind = kind
        name = hashlib.sha256(f"{kind}\0{self.dest}".encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.path = (folder or cache_folder()) / f"export-{name}.json"

    def snapshot(self) -> Snapshot | None:
        """Every entry under the destination (or the tar file itself), None if it cannot be
        read whole or has more than MAX_ENTRIES entries."""
        try:
            if self.kind != "local":
                return {".": _stat(os.lstat(self.dest))}
            found: Snapshot = {".": _stat(os.lstat(self.dest))}
            for top, dirs, files in os.walk(self.dest, onerror=_raise):
                for name in dirs + files:
                    path = os.path.join(top, name)
                    found[os.path.relpath(path, self.dest)] = _stat(os.lstat(path))
                if len(found) > MAX_ENTRIES:
                    return None
            return found
        except OSError:
            return None

    def holds(self, digest: str) -> bool:
        """Does the destination still hold what the build of `digest` wrote?"""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("dest") != self.dest:
            return False
        entries = self.snapshot()
        if data.get("digest") != digest or data.get("entries") != entries or entries is None:
            return False
        hashes = data.get("hashes") or {}
        racy = _racy(entries, data.get("at"))
        return all(hashes.get(path) == _sha256(self._file(path)) for path in racy)

    def remember(self, digest: str) -> None:
        """The export of `digest` has just been written: record what is there now."""
        entries = self.snapshot()
        if entries is None:
            self.forget()
            return
        at = time.time_ns()
        hashes = {}
        for path in _racy(entries, at):
            found = _sha256(self._file(path))
            if found is None:
                self.forget()
                return
            hashes[path] = found
        data = {"format": FORMAT, "dest": self.dest, "kind": self.kind, "digest": digest, "entries": entries,
                "at": at, "hashes": hashes}
        write_json(self.path, data)  # a read-only home only costs the next build a solve

    def _file(self, path: str) -> str:
        return self.dest if path == "." else os.path.join(self.dest, path)

    def forget(self) -> None:
        """Before an export starts writing: a build cut short leaves no record to trust."""
        with contextlib.suppress(OSError):
            self.path.unlink()


def _stat(found: os.stat_result) -> list[int]:
    return [found.st_mode, found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino]


def _racy(entries: Snapshot, at: object) -> list[str]:
    """Files and links changed within SETTLED_SECONDS before `at` (all of them if `at` is unknown)."""
    since = at - int(SETTLED_SECONDS * 1e9) if isinstance(at, int) else None
    return [path for path, (mode, _, mtime, ctime, _) in entries.items()
            if (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) and (since is None or max(mtime, ctime) >= since)]


def _sha256(path: str) -> str | None:
    """A file's content hash, or a link's target: what a replacement in the same tick could change."""
    try:
        return "link:" + os.readlink(path) if os.path.islink(path) else sha256_of(path)
    except OSError:
        return None


def _raise(error: OSError) -> None:
    raise error
