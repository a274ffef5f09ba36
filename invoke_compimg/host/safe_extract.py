"""Safe extraction of an artifact's tar stream onto the host.

An image's contents are untrusted. Members are checked here and by tarfile's `data`
filter (no absolute names, no `..`, no links leaving the destination, no device files,
setuid/setgid cleared), written into a fresh staging folder inside the destination (so
nothing an earlier extraction left, such as a planted symlink, is ever written through),
and only then merged into place (`placing`): a file of the user's that the artifact does not
replace stays. A failure or interruption leaves the destination as it was.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from dataclasses import field
from pathlib import Path

from ..errors import UserError
from ..placing import Clash, merge_into, staging_folder
from ..records import record


@record(frozen=False)
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
    staging = staging_folder(dest_path)
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
        aside = os.path.join(staging, "old")
        os.mkdir(aside)
        try:
            result.names = merge_into(root, dest_path, aside)
        except Clash as exc:
            raise UserError(f"cannot put {what} into {dest}: {exc}") from None
        except OSError as exc:
            raise UserError(f"cannot put {what} into {dest} ({exc.strerror}); "
                            "the destination is as it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
