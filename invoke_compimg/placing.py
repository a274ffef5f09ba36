"""Putting files into a folder of the user's without ever leaving it half-written: everything
is written into a staging folder inside the destination first, then moved in with rename(2)
(which never follows a symlink) and merged, as `docker cp` does: a file of the user's that the
new files do not replace stays. What a move replaces is set aside and put back on failure.
Used by artifact extraction (a tar from a container) and by BuildKit's local exports."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .procs import alive

STAGING_PREFIX = ".compimg-staging-"


def reap_staging(folder: Path) -> None:
    """Remove the staging folders and files (a tar export's) that killed runs left in
    `folder`: named by their process, which is gone."""
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(STAGING_PREFIX) or entry.is_symlink():
            continue
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def staging_folder(dest: Path) -> str:
    """A fresh staging folder inside `dest` (which must be a real folder); those of killed
    runs are removed first. OSError if `dest` cannot hold one."""
    reap_staging(dest)
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=dest)


class Clash(Exception):
    """The new files would replace a folder of the user's with a file, or a file with a folder:
    `docker cp` refuses both, and so do we (a folder set aside would be lost with its files)."""

    def __init__(self, path: str, folder_replaced: bool) -> None:
        self.path = path
        what = "the folder '{0}' with a file" if folder_replaced else "the file '{0}' with a folder"
        super().__init__(f"it would replace {what.format(path)}; move it away, or choose another destination")


def merge_into(staged: str, dest: Path, aside: str) -> list[str]:
    """Move everything under `staged` into `dest`, merging into folders that are real folders
    there (lstat: never through a symlink; their modes stay the user's), replacing files and
    links of the same name; what is replaced goes to `aside` (an empty folder), and is put back
    if a move fails. Clash (nothing changed) if a folder would become a file or a file a folder.
    Returns the top-level names written."""
    moves: list[tuple[str, str, str | None]] = []  # (path in dest, staged path, set-aside path)
    counter = 0

    def merge(source_dir: str, target_dir: str) -> None:
        nonlocal counter
        for name in sorted(os.listdir(source_dir)):
            source = os.path.join(source_dir, name)
            target = os.path.join(target_dir, name)
            new_is_dir = os.path.isdir(source) and not os.path.islink(source)
            try:
                old = os.lstat(target)
            except FileNotFoundError:
                old = None
            if new_is_dir and old is not None and stat.S_ISDIR(old.st_mode):
                merge(source, target)
                continue
            if old is not None and (stat.S_ISDIR(old.st_mode) or (new_is_dir and stat.S_ISREG(old.st_mode))):
                raise Clash(os.path.relpath(target, dest), folder_replaced=stat.S_ISDIR(old.st_mode))
            set_aside = None
            if old is not None:
                counter += 1
                set_aside = os.path.join(aside, str(counter))
                os.rename(target, set_aside)
            moves.append((target, source, set_aside))
            os.rename(source, target)

    names = sorted(os.listdir(staged))
    try:
        merge(staged, str(dest))
    except BaseException:
        for target, source, set_aside in reversed(moves):
            if os.path.lexists(target) and not os.path.lexists(source):
                os.rename(target, source)
            if set_aside is not None:
                os.rename(set_aside, target)
        raise
    return names
