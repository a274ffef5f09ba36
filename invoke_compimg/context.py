"""Minimal build contexts: only the files a stage's own COPY/ADD read from the context.

`.dockerignore` is applied by the Docker SDK's own `exclude_paths`; this module only
decides which of the remaining paths a stage's sources can match, and fingerprints them
for whole-stage skips.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
from collections.abc import Iterable

from docker.utils.build import exclude_paths

_WILDCARDS = set("*?[")
DOCKERFILE_IN_CONTEXT = ".compimg.Dockerfile"  # the lowered Dockerfile's name in what we send


def dockerignore_patterns(context: str) -> list[str]:
    """`.dockerignore` lines the way the SDK's own `build(path=...)` reads them."""
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        lines = (line.strip() for line in handle.read().splitlines())
        return [line for line in lines if line and not line.startswith("#")]


def _normalise(source: str) -> str:
    path = posixpath.normpath("/" + source).lstrip("/")
    return "" if path == "." else path


def _matches(path: str, source: str) -> bool:
    """Does context `path` fall under COPY source `source` (file, directory or wildcard)?"""
    if source == "":
        return True  # `.` or `/`: the whole context
    if not _WILDCARDS & set(source):
        return path == source or path.startswith(source + "/")
    depth = source.count("/") + 1
    head = "/".join(path.split("/")[:depth])
    # Go's filepath.Match, which Docker uses: `*` never crosses `/`, like fnmatch per part.
    return len(head.split("/")) == depth and all(
        fnmatch.fnmatchcase(part, pattern) for part, pattern in zip(head.split("/"), source.split("/"), strict=True)
    )


def files_read(context: str, sources: Iterable[str]) -> list[str]:
    """Context paths (files, directories and their parents) that `sources` can read, after
    `.dockerignore`. A source with a variable (`COPY $DIR .`) cannot be told in advance:
    then the whole context counts as read."""
    wanted = list(sources)
    if not wanted:
        return []
    if any("$" in s for s in wanted):
        wanted = ["."]
    normalised = [_normalise(s) for s in wanted]
    root = os.path.abspath(context)
    # exclude_paths always keeps the Dockerfile it is given (by default the user's own, even
    # when .dockerignore drops it, which Docker does not do): name ours, which is never there.
    candidates = exclude_paths(root, dockerignore_patterns(context), dockerfile=DOCKERFILE_IN_CONTEXT)
    if "" in normalised:
        return sorted(candidates)
    chosen: set[str] = set()
    for path in candidates:
        if any(_matches(path, s) for s in normalised):
            chosen.add(path)
            parent = posixpath.dirname(path)
            while parent:
                chosen.add(parent)
                parent = posixpath.dirname(parent)
    return sorted(p for p in chosen if p in candidates or os.path.isdir(os.path.join(root, p)))


def fingerprint(context: str, paths: Iterable[str]) -> str:
    """A digest of the paths' names, types, modes and contents (not their times)."""
    digest = hashlib.sha256()
    root = os.path.abspath(context)
    for path in paths:
        full = os.path.join(root, path)
        stat = os.lstat(full)
        digest.update(f"{path}\0{stat.st_mode:o}\0".encode())
        if os.path.islink(full):
            digest.update(os.readlink(full).encode())
        elif os.path.isfile(full):
            with open(full, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
