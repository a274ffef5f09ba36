"""What a FileSync dir sends: its entries, in the order and with the stat fsutil sends.

Facts of fsutil's send side (tonistiigi/fsutil walker.go, stat.go, send.go) relied on:
- order is Go's `filepath.Walk`: depth first, each folder's names sorted bytewise, a folder
  before its contents (so `a.txt` comes after everything in `a/`); every entry's parent
  folder is sent before it, or the receiver refuses the stream;
- `mode` holds Go's `os.FileMode` bits (folder 1<<31, symlink 1<<27, ...), not `st_mode`;
- `modTime` is nanoseconds; a symlink carries its target as written in `linkname`; the second
  path of a hard link carries the first path in `linkname` and size 0;
- only regular files (no type bits) have data that may be requested, by their index in
  the walk;
- `include-patterns` (and `followpaths`, resolved through symlinks first) keep a path when a
  pattern matches it or, cut to its depth, a folder on the way; `exclude-patterns` are
  .dockerignore patterns, and an excluded folder is still walked when an exception pattern
  lies below it.

Narrowness (the session is a door into the user's machine): nothing outside the dir's root
is listed or opened. Symlinks are never followed (a `followpaths` link is resolved inside the
root, as if the root were `/`); files are opened component by component with O_NOFOLLOW
and must still be regular files when opened. Sockets are left out.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field
from types import MappingProxyType
from typing import NamedTuple

from ...links import escapes, resolve_through_links
from ...patterns import BadPattern, Matcher, clean, match_prefix
from ...records import record

# Go's os.FileMode bits (io/fs)
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_NAMED_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHAR_DEVICE = 1 << 21
GO_STICKY = 1 << 20
GO_IRREGULAR = 1 << 19
GO_TYPE = GO_DIR | GO_SYMLINK | GO_NAMED_PIPE | GO_SOCKET | GO_DEVICE | GO_CHAR_DEVICE | GO_IRREGULAR

NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


def go_mode(mode: int) -> int:
    """`st_mode` as Go's os.FileMode (what `fi.Mode()` gives for an lstat)."""
    known = _GO_MODES.get(mode)
    if known is None:
        known = _GO_MODES[mode] = _go_mode(mode)
    return known


_GO_MODES: dict[int, int] = {}  # a context has a handful of distinct modes, and a walk asks per file


def _go_mode(mode: int) -> int:
    bits = mode & 0o777
    kind = st.S_IFMT(mode)
    if kind == st.S_IFDIR:
        bits |= GO_DIR
    elif kind == st.S_IFLNK:
        bits |= GO_SYMLINK
    elif kind == st.S_IFBLK:
        bits |= GO_DEVICE
    elif kind == st.S_IFCHR:
        bits |= GO_DEVICE | GO_CHAR_DEVICE
    elif kind == st.S_IFIFO:
        bits |= GO_NAMED_PIPE
    elif kind == st.S_IFSOCK:
        bits |= GO_SOCKET
    elif kind != st.S_IFREG:
        bits |= GO_IRREGULAR
    if mode & st.S_ISUID:
        bits |= GO_SETUID
    if mode & st.S_ISGID:
        bits |= GO_SETGID
    if mode & st.S_ISVTX:
        bits |= GO_STICKY
    return bits


def requestable(go: int) -> bool:
    """fsutil's fileCanRequestData: only entries without type bits have data."""
    return go & GO_TYPE == 0


@record
class VirtualFile:
    """A file that exists only in memory (our generated Dockerfile, heredocs' files), sent as
    if it were in the dir's root. The daemon decides what changed since the last transfer by
    size and time, so two contents of the same size must never share a time: the time comes
    from the content, whole or (when a time is given, which then holds to the second) in its
    nanoseconds."""

    data: bytes
    mode: int = 0o644
    mtime_ns: int = 0

    def __post_init__(self) -> None:
        digest = int.from_bytes(hashlib.sha256(self.data).digest()[:4], "big")
        if not self.mtime_ns:
            object.__setattr__(self, "mtime_ns", (1 << 60) + digest * 1_000_000_000)
        else:  # the second given (what the user sees), the content in the nanoseconds
            second = self.mtime_ns // 1_000_000_000 * 1_000_000_000
            object.__setattr__(self, "mtime_ns", second + digest % 1_000_000_000)


@record
class Dir:
    """A folder the daemon may read, under `name` (`context`, `dockerfile`).

    `root`: the folder (None: only `files`). `allow`: if given, only these relative paths
    (files or folders, with everything below a folder) and the folders leading to them
    are ever listed; the caller computes it from what the build reads. `files`: virtual
    files by clean relative path (`Dockerfile`, `.compimg-heredoc/ab12/EOT` -> VirtualFile),
    their folders implied; they hide what `root` has of the same name."""

    name: str
    root: str | None = None
    allow: Sequence[str] | None = None
    files: Mapping[str, VirtualFile] = field(default_factory=dict)
    # The folder name the root's entries appear under (""; the top), so that virtual files can
    # sit beside them and never among them (`COPY . .` of `root_under` does not see them).
    root_under: str = ""

    def __post_init__(self) -> None:
        for name in self.files:
            if not name or escapes(name) or clean(name) != name or name.startswith("/"):
                raise ValueError(f"virtual file {name!r}: give a clean path inside the dir")
        for path in self.allow or ():
            if escapes(path):
                raise ValueError(f"allowed path {path!r} is not inside the dir")
        if self.root_under and ("/" in self.root_under or self.root_under in (".", "..")
                                or any(p.split("/")[0] == self.root_under for p in self.files)):
            raise ValueError(f"root_under {self.root_under!r}: one plain name that no virtual file uses")

    def real(self, path: str) -> str | None:
        """The root-relative path of the dir's `path` (None: not one of the root's)."""
        if not self.root_under:
            return path
        if path == self.root_under:
            return ""
        return path[len(self.root_under) + 1:] if path.startswith(self.root_under + "/") else None


class Entry(NamedTuple):
    """One entry as fsutil's Stat describes it; `source` is where its data comes from
    (a path relative to the root, or the bytes of a virtual file; None: no data).
    A tuple, not a dataclass: a walk makes one per file, and this is 7x cheaper to make."""

    path: str
    mode: int  # Go os.FileMode bits
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = NO_XATTRS
    source: str | bytes | None = None

    @property
    def requestable(self) -> bool:
        return requestable(self.mode) and self.source is not None


@record
class Request:
    """What the daemon asked for in its gRPC metadata."""

    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    follow: Sequence[str] | None = None


def _follow(directory: Dir, root: str | None, path: str) -> list[str]:
    """A followpath of the daemon's (a dir path) resolved as `resolve_through_links` does, through
    the root's links, in the dir's terms again."""
    if not directory.root_under:
        return resolve_through_links(root, path)
    real = directory.real(clean(path))
    if real is None:
        return resolve_through_links(None, path)  # a virtual path: no links to read
    under = directory.root_under
    return [under] if not real else [f"{under}/{p}" for p in resolve_through_links(root, real)]


class _Includes:
    """fsutil's include test with its "everything below a fully matched folder" memory."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self.last_dir = ""

    def keep(self, path: str, is_dir: bool) -> bool:
        if self.last_dir and path.startswith(self.last_dir + "/"):
            return True
        matched = False
        partial = True
        for pattern in self.patterns:
            hit, cut = match_prefix(pattern, path)
            if hit:
                matched = True
                if not cut:
                    partial = False
                    break
        if matched and not partial and is_dir:
            self.last_dir = path
        return matched


def _allowed(path: str, allow: Sequence[str] | None, is_dir: bool) -> bool:
    """Is `path` one of the `allow`ed paths (cleaned), inside one, or a folder that leads to one?"""
    if path in ("", "."):
        return True  # the root itself (listed as a folder when it sits under `root_under`)
    if allow is None:
        return True
    for item in allow:
        if item == "." or path == item or path.startswith(item + "/"):
            return True
        if is_dir and item.startswith(path + "/"):
            return True
    return False


def walk(directory: Dir, request: Request = Request()) -> list[Entry]:
    """The entries of `directory` the daemon's `request` selects, in fsutil's order.
    A folder left out is not descended into (Walk's SkipDir), unless an exception pattern
    may bring back something below it. Raises BadPattern for patterns Docker rejects."""
    return list(walking(directory, request))


def walking(directory: Dir, request: Request = Request()) -> Iterator[Entry]:
    """`walk`'s entries one at a time (a walk made ahead stops when told to). The request's
    patterns are read by this call: BadPattern is raised here, not while iterating."""
    root = os.path.realpath(directory.root) if directory.root is not None else None
    includes = None if request.include is None else [clean(p) for p in request.include]
    targets = [t for p in request.follow or () for t in _follow(directory, root, p)]
    if targets:
        includes = sorted(set((includes or []) + targets))
    include = _Includes(includes) if includes is not None else None
    excluder = Matcher(list(request.exclude)) if request.exclude else None
    allow = None if directory.allow is None else [clean(path) for path in directory.allow]

    def entries() -> Iterator[Entry]:
        links: dict[tuple[int, int], str] = {}
        folders = [_children(root, directory, "")]  # the folders being listed, innermost last
        while folders:
            found = next(folders[-1], None)
            if found is None:
                folders.pop()
                continue
            path, info, source, absolute = found
            is_dir = isinstance(source, VirtualFolder) or (info is not None and st.S_ISDIR(info.st_mode))
            if allow is not None and isinstance(source, str) and not _allowed(source, allow, is_dir):
                continue
            if include is not None and not include.keep(path, is_dir):
                continue
            if excluder is not None and excluder.matches(path) and not (is_dir and excluder.may_hold_exception(path)):
                continue
            entry = _entry(path, info, source, absolute, links)
            if entry is None:
                continue
            yield entry
            if is_dir:  # its contents come right after it, before its next sibling
                folders.append(_children(root, directory, path))

    return entries()


@record
class VirtualFolder:
    """A folder that holds virtual files (and may hold none of the root's)."""


VIRTUAL_FOLDER = VirtualFolder()


def _virtual(directory: Dir, prefix: str) -> dict[str, VirtualFile | VirtualFolder]:
    """The virtual entries right inside `prefix` ("" for the top): files, and folders that
    lead to deeper ones."""
    found: dict[str, VirtualFile | VirtualFolder] = {}
    start = f"{prefix}/" if prefix else ""
    for path, file in directory.files.items():
        if not path.startswith(start):
            continue
        head, slash, _ = path[len(start):].partition("/")
        found[head] = VIRTUAL_FOLDER if slash else file
    return found


def _children(root: str | None, directory: Dir,
              prefix: str) -> Iterator[tuple[str, os.stat_result | None, str | VirtualFile | VirtualFolder, str]]:
    """(relative path, lstat, source, absolute path) of one folder's entries, sorted bytewise by
    name; virtual entries come with no lstat and no absolute path (and hide a real one of the
    same name)."""
    names: dict[bytes, tuple[str, VirtualFile | VirtualFolder | None]] = {}
    virtual_here = _virtual(directory, prefix) if directory.files else {}
    if not prefix and directory.root_under and root is not None:
        virtual_here[directory.root_under] = VIRTUAL_FOLDER  # the root's entries go under it
    real_prefix = directory.real(prefix) if not (prefix and _virtual_only(directory, prefix)) else None
    folder = ""
    if root is not None and real_prefix is not None and not (not prefix and directory.root_under):
        folder = f"{root.rstrip('/')}/{real_prefix}" if real_prefix else root
        try:
            with os.scandir(folder) as scan:
                for item in scan:
                    names[os.fsencode(item.name)] = (item.name, None)
        except (FileNotFoundError, NotADirectoryError):
            pass
    for name, source in virtual_here.items():
        names[os.fsencode(name)] = (name, source)
    inside = folder.rstrip("/") + "/"
    for key in sorted(names):
        name, virtual = names[key]
        path = f"{prefix}/{name}" if prefix else name
        if virtual is not None and not (virtual is VIRTUAL_FOLDER and name == directory.root_under and not prefix):
            yield path, None, virtual, ""
            continue
        if virtual is VIRTUAL_FOLDER:  # the folder the root appears under: the root's own stat
            assert root is not None
            yield path, os.lstat(root), "", root
            continue
        assert root is not None and real_prefix is not None
        absolute = inside + name
        try:
            info = os.lstat(absolute)
        except OSError:
            continue  # gone since the listing, as fsutil skips it
        yield path, info, f"{real_prefix}/{name}" if real_prefix else name, absolute


def _virtual_only(directory: Dir, prefix: str) -> bool:
    """Is `prefix` a virtual folder (then nothing of the root is listed inside it)?"""
    parent, _, name = prefix.rpartition("/")
    if not parent and name == directory.root_under:
        return False
    return isinstance(_virtual(directory, parent).get(name), VirtualFolder)


def _entry(path: str, info: os.stat_result | None, source: str | VirtualFile | VirtualFolder, absolute: str,
           links: dict[tuple[int, int], str]) -> Entry | None:
    if isinstance(source, VirtualFolder):
        return Entry(path, GO_DIR | 0o755, os.getuid(), os.getgid(), 0, 0)
    if isinstance(source, VirtualFile):
        return Entry(path, source.mode & 0o777, os.getuid(), os.getgid(), len(source.data), source.mtime_ns,
                     source=source.data)
    assert info is not None
    mode = go_mode(info.st_mode)
    if mode & GO_SOCKET:
        return None
    linkname = ""
    size = info.st_size
    devmajor = devminor = 0
    data: str | None = source if requestable(mode) else None
    kind = st.S_IFMT(info.st_mode)
    if kind == st.S_IFDIR:
        size = 0
    elif kind == st.S_IFLNK:
        try:
            linkname = os.readlink(absolute)
        except OSError:
            return None
    elif kind in (st.S_IFBLK, st.S_IFCHR):
        devmajor, devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
    elif kind == st.S_IFREG and info.st_nlink > 1:
        first = links.setdefault((info.st_dev, info.st_ino), path)
        if first != path:
            linkname, size, data = first, 0, None
    return Entry(path, mode, info.st_uid, info.st_gid, size, info.st_mtime_ns, linkname, devmajor, devminor,
                 _xattrs(absolute), data)


def _xattrs(path: str) -> Mapping[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return NO_XATTRS
    if not names:
        return NO_XATTRS
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return values


def open_beneath(root: str, path: str) -> int:
    """A read-only descriptor of the regular file `path` inside `root`, opened one component
    at a time without following any symlink (so a file swapped for a link since the walk
    cannot lead out of the root). Raises OSError otherwise."""
    if escapes(path):
        raise PermissionError(f"{path!r} is outside the dir")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    current = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        parts = clean(path).split("/")
        for part in parts[:-1]:
            following = os.open(part, flags | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = following
        # O_NONBLOCK: opening a FIFO that replaced the file must not hang
        fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=current)
    finally:
        os.close(current)
    if not st.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PermissionError(f"{path!r} is not a regular file")
    os.set_blocking(fd, True)
    return fd


__all__ = ["BadPattern", "Dir", "Entry", "Request", "VirtualFile", "go_mode", "open_beneath", "requestable", "walk",
           "walking"]
