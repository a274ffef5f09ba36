"""Minimal build contexts: only the files a stage's own COPY/ADD read from the context.

`.dockerignore` is applied as Docker applies it (`patterns.Matcher`); this module decides
which of the remaining paths a stage's sources can match, fingerprints them for
whole-stage skips, and packs them with the Dockerfile we send (after docker-py, where
`utils/build.py` packs and `api/build.py` talks to the engine).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import posixpath
import stat as stat_module
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING

from .. import patterns
from ..dockerfile.heredocs import InlineFile
from ..errors import UserError
from ..links import resolve_through_links
from .file_hashes import FileHashes

if TYPE_CHECKING:  # a build with a session sends no tar: tarfile is imported when one is made
    import tarfile

_WILDCARDS = set("*?[")
DOCKERFILE_IN_CONTEXT = ".compimg.Dockerfile"  # the lowered Dockerfile's name in what we send


@contextlib.contextmanager
def reading(who: str, folder: str | os.PathLike[str], *, where: str, line: int) -> Iterator[None]:
    """The file system's errors while reading the build context, as one line."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{who} cannot read its build context {folder} ({exc}); check that folder's files "
                        "and permissions", where=where, line=line) from exc


def read_dockerignore(context: str) -> str | None:
    """The context's `.dockerignore`, or None. Bytes that are not UTF-8 are kept as they
    are (surrogate escapes), as file names on disk are read: Docker reads bytes too."""
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def dockerignore_patterns(context: str) -> list[str]:
    """`.dockerignore` patterns, read as docker/cli reads them."""
    return patterns.read_dockerignore(read_dockerignore(context) or "")


def included(root: str, matcher: patterns.Matcher, under: str = "") -> set[str]:
    """Every path of the context folder (files, folders, links; relative, '/'-separated)
    that `.dockerignore` leaves in, walked as Docker walks it: an excluded folder is entered
    only when an exception (`!`) may bring something inside it back. `under`: only that path,
    what is below it and the folders on the way to it (as the whole walk would find them)."""
    found: set[str] = set()

    def walk(relative: str) -> None:
        with os.scandir(os.path.join(root, relative)) as entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                folder = entry.is_dir(follow_symlinks=False)
                if matcher.matches(path):
                    if folder and matcher.may_hold_exception(path):
                        walk(path)
                    continue
                found.add(path)
                if folder:
                    walk(path)

    relative = ""
    for name in under.split("/") if under else ():
        relative = f"{relative}/{name}" if relative else name
        try:
            folder = stat_module.S_ISDIR(os.lstat(os.path.join(root, relative)).st_mode)
        except OSError:  # not there (or not a folder on the way): the walk would not find it
            return found
        if matcher.matches(relative):
            if not (folder and matcher.may_hold_exception(relative)):
                return found
        else:
            found.add(relative)
        if not folder:
            return found
    walk(relative)
    return found


def _walk_roots(sources: Iterable[str]) -> list[str]:
    """Where the paths of normalised COPY `sources` can be: each one's leading folders before a
    wildcard ("" for the whole context), without one that another holds."""
    roots: set[str] = set()
    for source in sources:
        parts = source.split("/") if source else []
        fixed = next((i for i, part in enumerate(parts) if _WILDCARDS & set(part)), len(parts))
        roots.add("/".join(parts[:fixed]))
    if "" in roots:
        return [""]
    return [r for r in sorted(roots) if not any(r.startswith(other + "/") for other in roots)]


def archive(context: str, dockerfile_text: str, paths: list[str], *, prefix: str = "",
            files: Mapping[str, InlineFile] | None = None, files_time: float = 0) -> IO[bytes]:
    """The build context as a tar file: `paths` of the context folder (see `files_read`)
    plus our Dockerfile and the `files` the lowering generated (heredocs). As the docker
    CLI does for a Dockerfile outside the context, `.dockerignore` gets the Dockerfile's
    name appended, so the classic builder drops it before any `COPY . .` sees it. BuildKit
    applies no `.dockerignore` to a tar context: there the context goes under `prefix`
    (see `lowering.multi_stage`)."""
    root = os.path.abspath(context)
    ignore = read_dockerignore(root)
    if ignore is not None:
        ignore = ignore.rstrip("\n") + "\n" + DOCKERFILE_IN_CONTEXT + "\n"
    else:  # nothing to keep: ignore the file we add as well, so no new file appears
        ignore = f".dockerignore\n{DOCKERFILE_IN_CONTEXT}\n"
    extra = [(DOCKERFILE_IN_CONTEXT, dockerfile_text)]
    if not prefix:
        extra.append((".dockerignore", ignore))
    return context_tar(root, paths, extra, prefix=prefix, generated=files, generated_time=files_time)


def _needs_extension(info: tarfile.TarInfo) -> bool:
    """Whether GNU tar writes an extra ././@LongLink header before this member."""
    import tarfile

    encoded = [s.encode("utf-8", "surrogateescape") for s in (info.name, info.linkname)]
    return any(len(b) >= tarfile.LENGTH_NAME for b in encoded)


def context_tar(root: str, files: list[str], extra_files: list[tuple[str, str]], *, prefix: str = "",
                generated: Mapping[str, InlineFile] | None = None, generated_time: float = 0) -> IO[bytes]:
    """The build context as an uncompressed GNU tar (in a temporary file, at offset 0).

    `files` are context-relative paths, packed as the SDK's `create_archive` does (files,
    directories, symlinks as links, modes and owners as on disk); `extra_files` are
    (name, text) pairs (the Dockerfile, .dockerignore) that replace context files of the
    same name; `generated` are files the lowering made (heredocs: path -> bytes and mode),
    owned by root like the extra files and dated `generated_time`.

    GNU format, because the engine decides "is this an archive" from the first
    1024 bytes: a PAX header (Python's default) or a long-name header plus its data fills
    them and the body is then read as a Dockerfile. So the first member must have a short
    name: extra files come first, and failing that a short-named file is moved to the front.

    `prefix` (e.g. "ctx/") puts the context files under that folder and leaves the extra files
    at the top. Without a session the engine applies no .dockerignore to a tar context, so
    the Dockerfile sent in it is seen by `COPY . .` and is part of that step's cache key (an
    edit anywhere in the file re-runs every `COPY . .`); with a prefix, and sources rewritten
    to `ctx/...`, it is not.
    """
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    try:
        _pack(out, root, files, extra_files, prefix, generated or {}, int(generated_time))
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def _pack(out: IO[bytes], root: str, files: list[str], extra_files: list[tuple[str, str]], prefix: str,
          generated: Mapping[str, InlineFile], generated_time: int) -> None:
    import tarfile

    extra_names = {name for name, _ in extra_files} | set(generated)
    with tarfile.open(mode="w", fileobj=out, format=tarfile.GNU_FORMAT) as archive:
        infos: list[tuple[tarfile.TarInfo, str]] = []  # with its path on disk
        for path in files:
            if prefix + path in extra_names:
                continue
            try:
                info = archive.gettarinfo(os.path.join(root, path), arcname=prefix + path)
            except OSError as exc:  # removed since the context was listed
                raise UserError(f"cannot read {os.path.join(root, path)} for the build context "
                                f"({exc.strerror})") from exc
            if info is None:  # a socket: the SDK skips those too
                continue
            if info.mtime < 0 or info.mtime > 8**11 - 1:  # bpo-32713, as the SDK does
                info.mtime = int(info.mtime)
            infos.append((info, os.path.join(root, path)))
        if not extra_files and infos and _needs_extension(infos[0][0]):
            short = next((i for i, (info, _) in enumerate(infos) if not _needs_extension(info)), None)
            if short is not None:
                infos.insert(0, infos.pop(short))
        for name, text in extra_files:
            data = text.encode("utf-8", "surrogateescape")  # .dockerignore bytes kept as read
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, file in generated.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(file.data), file.mode, generated_time
            archive.addfile(info, io.BytesIO(file.data))
        if prefix and not any(info.name == prefix.rstrip("/") for info, _ in infos):
            # The folder itself, even when no file of the context is read: a COPY of a missing
            # path then says "not found", not that our folder is missing.
            folder = tarfile.TarInfo(prefix.rstrip("/"))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(folder)
        for info, full in infos:
            if info.isfile():
                try:
                    with open(full, "rb") as handle:
                        archive.addfile(info, handle)
                except OSError as exc:
                    raise UserError(f"cannot read {full} for the build context ({exc.strerror})") from exc
            else:
                archive.addfile(info)


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
    `.dockerignore`, symlinks in a source's path followed inside the context. A source with a
    variable (`COPY $DIR .`) cannot be told in advance: then the whole context counts as read."""
    wanted = list(sources)
    if not wanted:
        return []
    if any("$" in s for s in wanted):
        wanted = ["."]
    normalised = [_normalise(s) for s in wanted]
    root = os.path.abspath(context)
    try:
        matcher = patterns.Matcher(dockerignore_patterns(context))
    except patterns.BadPattern as exc:
        raise UserError(f"{os.path.join(root, '.dockerignore')}: {exc}; fix that pattern") from None
    if "" in normalised:
        return sorted(included(root, matcher))
    # `COPY link/file` and `COPY link` read where the link leads (inside the context), and the
    # link itself, which the engine follows in the context it was sent.
    normalised = sorted({p for s in normalised for p in resolve_through_links(root, s) or [s]})
    # Only where the sources can be is walked: a context's other trees (a .git, node_modules)
    # cost every build, the warm no-op included, a stat per file.
    candidates: set[str] = set()
    for start in _walk_roots(normalised):
        candidates |= included(root, matcher, under=start)
    # (per context file before every build, the warm no-op included: kept lean)
    wild = [s for s in normalised if _WILDCARDS & set(s)]
    plain = set(normalised).difference(wild)
    folders = tuple(s + "/" for s in plain)
    chosen: set[str] = set()
    for path in candidates:
        if path in plain or path.startswith(folders) or any(_matches(path, s) for s in wild):
            chosen.add(path)
            parent = path.rpartition("/")[0]
            while parent and parent not in chosen:  # a sibling's walk up went on from here already
                chosen.add(parent)
                parent = parent.rpartition("/")[0]
    return sorted(p for p in chosen if p in candidates or os.path.isdir(os.path.join(root, p)))


def fingerprint(context: str, paths: Iterable[str], hashes: FileHashes | None = None, *,
                save_soon: bool = False) -> str:
    """A digest of the paths' names, types, modes and contents (not their times). `hashes`
    remembers contents between runs (see `file_hashes`), saved before this returns or, with
    `save_soon`, meanwhile (`FileHashes.save_soon`)."""
    digest = hashlib.sha256()
    root = os.path.abspath(context)
    hashes = hashes if hashes is not None else FileHashes(root)
    prefix = os.path.join(root, "")
    for path in paths:  # (once per context file before every build: kept lean)
        full = prefix + path
        stat = os.lstat(full)
        mode = stat.st_mode
        if stat_module.S_ISLNK(mode):
            content = os.readlink(full)
        elif stat_module.S_ISREG(mode):
            content = hashes.sha256(path, stat)
        else:
            content = ""
        digest.update(f"{path}\0{mode:o}\0{content}\0".encode("utf-8", "surrogateescape"))  # (a name's bytes)
    if save_soon:
        hashes.save_soon()
    else:
        hashes.save()
    return digest.hexdigest()
