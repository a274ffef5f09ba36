"""Safe extraction of an artifact's tar stream onto the host.

An image's contents are untrusted. Members are checked here and by tarfile's `data`
filter (no absolute names, no `..`, no links leaving the destination, no device files,
setuid/setgid cleared), written into a fresh staging folder inside the destination (so
nothing an earlier extraction left, such as a planted symlink, is ever written through),
and only then moved into place. A failure or interruption leaves the destination as it was.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..procs import alive

STAGING_PREFIX = ".compimg-extract-"


@dataclass
class Extracted:
    names: list[str] = field(default_factory=list)  # top-level entries now in the destination
    skipped: list[str] = field(default_factory=list)  # device files and FIFOs left out
    files: int = 0


def _refuse(what: str, member: tarfile.TarInfo, why: str) -> UserError:
    return UserError(f"refusing to extract {what}: '{member.name}' {why}; "
                     "the artifact is unsafe to write to the host")


def _checked(member: tarfile.TarInfo, root: str, what: str, result: Extracted) -> tarfile.TarInfo | None:
    name = member.name
    if name.startswith("/") or posixpath.isabs(name):
        raise _refuse(what, member, "has an absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(what, member, "climbs out with '..'")
    if not parts:
        return None  # the archive's own "." entry
    if member.ischr() or member.isblk() or member.isfifo():
        result.skipped.append(name)
        return None
    if member.issym() and posixpath.isabs(member.linkname):
        raise _refuse(what, member, f"is a link to the absolute path '{member.linkname}'")
    try:
        member = tarfile.data_filter(member, root)
    except tarfile.FilterError as exc:
        raise _refuse(what, member, _filter_reason(exc)) from None
    # data_filter clears setuid/setgid/sticky; make sure the result keeps it that way.
    if member.mode is not None:
        member = member.replace(mode=member.mode & 0o777, deep=False)
    result.files += 1
    return member


def _filter_reason(exc: tarfile.FilterError) -> str:
    if isinstance(exc, tarfile.LinkOutsideDestinationError):
        return "is a link that points outside the destination"
    if isinstance(exc, tarfile.OutsideDestinationError):
        return "would be written outside the destination"
    if isinstance(exc, tarfile.AbsoluteLinkError):
        return "is a link to an absolute path"
    if isinstance(exc, tarfile.SpecialFileError):
        return "is a special file"
    return str(exc)


def extract(archive: tarfile.TarFile, dest: str | Path, what: str) -> Extracted:
    """Extract every member of `archive` (read as a stream) into `dest`. `what` names the
    artifact in messages, e.g. `build:/go/bin/app`."""
    dest_path = Path(dest)
    try:
        dest_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create destination {dest} ({exc.strerror})") from None
    if not dest_path.is_dir():
        raise UserError(f"destination {dest} is not a directory; pass --dest DIR")
    _remove_stale_staging(dest_path)
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=dest_path)
    result = Extracted()
    try:
        root = os.path.join(staging, "new")
        os.mkdir(root)

        def member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
            return _checked(member, path, what, result)

        try:
            archive.extractall(root, filter=member_filter)
        except (tarfile.ReadError, EOFError) as exc:
            raise UserError(f"the engine sent a broken archive for {what} ({exc}); "
                            "nothing was written, retry") from None
        except OSError as exc:
            raise UserError(f"cannot write {what} into {dest} ({exc.strerror}); "
                            "nothing was written") from None
        result.names = sorted(os.listdir(root))
        try:
            _move_into_place(root, dest_path, staging, result.names)
        except OSError as exc:
            raise UserError(f"cannot put {what} into {dest} ({exc.strerror}); "
                            "the destination is as it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _remove_stale_staging(dest: Path) -> None:
    """Staging folders of extractions that were killed (their process is gone)."""
    for entry in dest.iterdir():
        name = entry.name
        if not name.startswith(STAGING_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _move_into_place(root: str, dest: Path, staging: str, names: Iterable[str]) -> None:
    """Swap each new top-level entry in with rename(2), which never follows a symlink
    in the destination; old entries are set aside first and restored on failure."""
    aside = os.path.join(staging, "old")
    os.mkdir(aside)
    moved: list[tuple[str, bool]] = []  # (name, had an old entry)
    try:
        for name in names:
            target = dest / name
            had_old = os.path.lexists(target)
            if had_old:
                os.rename(target, os.path.join(aside, name))
            moved.append((name, had_old))
            os.rename(os.path.join(root, name), target)
    except BaseException:
        for name, had_old in reversed(moved):
            target = dest / name
            if not os.path.lexists(os.path.join(root, name)) and os.path.lexists(target):
                _remove(target)  # the new entry had gone in: take it out again
            if had_old:
                os.rename(os.path.join(aside, name), target)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
