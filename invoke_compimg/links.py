"""Paths inside a folder, followed through its symlinks without ever leaving it: links are
read, never followed on the host, and an absolute target is taken from the folder's top, as a
chroot (and BuildKit's copy) would take it. Shared by the minimal context (which files a COPY
through a link reads) and FileSync (what the daemon's followpaths lead to)."""

from __future__ import annotations

import os
import stat as st

from .patterns import clean


def escapes(path: str) -> bool:
    cleaned = clean(path)
    return cleaned.startswith("/") or cleaned == ".." or cleaned.startswith("../")


def resolve_through_links(root: str | None, path: str) -> list[str]:
    """`path` and, where a component is a symlink, where it leads inside the root (absolute
    targets are taken from the root, as a chroot would). Paths leaving the root are
    dropped; links are read, never followed on the host."""
    if escapes(path):
        return []
    found: list[str] = []
    pending = [clean(path)]
    seen: set[str] = set()
    while pending and len(seen) < 256:  # a loop of links ends here
        current = pending.pop()
        if current in seen or current == ".":
            continue
        seen.add(current)
        found.append(current)
        if root is None:
            continue
        parts = current.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            try:
                info = os.lstat(os.path.join(root, prefix))
            except OSError:
                break
            if st.S_ISLNK(info.st_mode):
                try:
                    target = os.readlink(os.path.join(root, prefix))
                except OSError:
                    break
                base = "" if target.startswith("/") else os.path.dirname(prefix)
                resolved = clean("/" + os.path.join(base, target)).lstrip("/")
                rest = "/".join(parts[i:])
                joined = clean(os.path.join(resolved, rest)) if resolved else clean(rest or ".")
                if not escapes(joined):
                    pending.append(joined)
                found.append(prefix)
                break
            if not st.S_ISDIR(info.st_mode):
                break
    return sorted(set(found))
