"""fsutil's diff-copy, receive side: a `local` export written into a folder of the user's.

The protocol (tonistiigi/fsutil receive.go), with the daemon sending: it sends STAT packets
in walk order and an empty STAT at the end; for each regular file we want we send REQ with
the file's index among the stats; it answers DATA packets of that ID, an empty one ending
the file. When every requested file is complete and the stats are over, we send FIN, the
daemon answers FIN and closes the stream.

What reaches the host follows the rules of `host/safe_extract.py` (which this layer may
not import): every path must be clean and relative (no '..', no absolute path, entries in
order under folders already sent); symlinks whose target is absolute or climbs out of the
destination are refused; device files, FIFOs and sockets are left out; setuid, setgid and
sticky bits are dropped; files are owned by us. Everything is written into a staging folder
inside the destination and only then moved in, entry by entry: the export **merges** into
the folder (an existing file the build does not write stays, as `docker cp` does), an
existing folder is entered only if it is a real folder (never through a symlink), and a
failure or interruption puts back what was replaced and leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ...errors import UserError
from ...patterns import clean
from ...placing import STAGING_PREFIX, Clash, merge_into, reap_staging, staging_folder
from .fsutil_wire import DATA, ERR, FIN, FIN_PACKET, STAT, Stat, decode, request_packet
from .fswalk import GO_DIR, GO_SYMLINK, GO_TYPE


class ExportRefused(UserError):
    """The export holds something we do not write to the host, or cannot be written."""


def _check_path(path: str) -> str:
    if (not path or path.startswith("/") or clean(path) != path or path == ".." or path.startswith("../")
            or "\0" in path):
        raise ExportRefused(f"refusing the export: '{path}' is not a clean relative path")
    return path


def _check_link(path: str, target: str) -> None:
    if "\0" in target:
        raise ExportRefused(f"refusing the export: '{path}' is a link to a name with a NUL byte")
    if target.startswith("/"):
        raise ExportRefused(f"refusing the export: '{path}' is a link to the absolute path '{target}'")
    resolved = clean(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ExportRefused(f"refusing the export: '{path}' is a link that points outside the destination")


MAX_LINK_HOPS = 40  # as Linux's own limit on following links in one lookup


def _leaves(links: dict[str, str], path: str) -> bool:
    """Does the link at `path` lead out of the tree once the other links it passes through are
    followed, as the kernel would follow them (`x/s -> ..` then `y -> x/s/..` leaves although
    each target alone stays inside)? Only the received tree counts: nothing is looked up on disk."""
    parts = path.split("/")[:-1]  # the link's folder: real folders only (entries never go through links)
    todo = links[path].split("/")
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return True
            parts.pop()
            continue
        candidate = "/".join([*parts, part])
        if candidate in links:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return False  # a loop leads nowhere, and so not out either
            target = links[candidate]
            if target.startswith("/"):
                return True
            todo[:0] = target.split("/")  # relative to the folder the link is in: `parts` as it is
            continue
        parts.append(part)
    return False


class Receiver:
    """Receives one export into `staging` (a fresh folder); `merge_into` then moves it in."""

    def __init__(self, staging: str) -> None:
        self.staging = staging
        self.folders = {""}
        self.regular: set[str] = set()  # regular files received: the only targets a hard link may have
        self.links: dict[str, str] = {}  # symlink path -> target, checked as a whole before anything moves in
        self.files: dict[int, tuple[str, int, int]] = {}  # index -> (path, mode, mtime)
        self.open: dict[int, BinaryIO] = {}
        self.pending: set[int] = set()
        self.skipped: list[str] = []
        self.dir_times: list[tuple[str, int, int]] = []  # (path, mode, mtime), applied at the end
        self.written = 0

    def run(self, incoming: Iterable[bytes], complete: Callable[[], None]) -> Iterator[bytes]:
        """The packets to send (REQ..., FIN) given the daemon's, fsutil Packets encoded
        (`fsutil_wire`). `complete` runs once every file is in, before our FIN: the daemon takes
        FIN as "written" and ends the solve, so the files must be in place by then. Raises
        ExportRefused."""
        outgoing: queue.Queue[bytes | BaseException | None] = queue.Queue()
        worker = threading.Thread(target=self._consume, args=(incoming, outgoing), name="compimg-export-read",
                                  daemon=True)
        worker.start()
        try:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item == FIN_PACKET:
                    self._finish()
                    complete()
                yield item
        finally:
            worker.join(timeout=5)
            for file in self.open.values():
                file.close()

    def _consume(self, incoming: Iterable[bytes], outgoing: queue.Queue[bytes | BaseException | None]) -> None:
        index = 0
        stats_over = fin_sent = False
        try:
            for message in incoming:
                packet = decode(message)
                if packet.type == STAT:
                    if packet.stat is None:
                        stats_over = True
                    else:
                        if self._stat(index, packet.stat):
                            self.pending.add(index)
                            outgoing.put(request_packet(index))
                        index += 1
                elif packet.type == DATA:
                    self._data(packet.id, packet.data)
                elif packet.type == FIN:
                    break
                elif packet.type == ERR:
                    raise ExportRefused(f"the export failed on the engine: {packet.data.decode('utf-8', 'replace')}")
                if stats_over and not self.pending and not fin_sent:
                    outgoing.put(FIN_PACKET)
                    fin_sent = True
            if not fin_sent:
                raise ExportRefused("the export stream ended before it was complete; nothing was written")
            outgoing.put(None)
        except BaseException as exc:  # handed to the sending side, which raises it
            outgoing.put(exc)

    def _stat(self, index: int, stat: Stat) -> bool:
        """Create what a stat describes (folders and links at once); True if its data is wanted."""
        path = _check_path(stat.path)
        parent = posixpath.dirname(path)
        if parent not in self.folders:
            raise ExportRefused(f"refusing the export: '{path}' comes before its folder")
        target = os.path.join(self.staging, path)
        mode = stat.mode
        if mode & GO_DIR:
            os.mkdir(target, 0o700)  # writable by us until the end, whatever its mode
            self.folders.add(path)
            self.dir_times.append((path, mode & 0o777, stat.mod_time))
            return False
        if mode & GO_SYMLINK:
            _check_link(path, stat.linkname)
            self.links[path] = stat.linkname
            os.symlink(stat.linkname, target)
            os.utime(target, ns=(stat.mod_time, stat.mod_time), follow_symlinks=False)
            return False
        if mode & GO_TYPE:  # devices, pipes, sockets
            self.skipped.append(path)
            return False
        if stat.linkname:  # a hard link to a file sent before
            first = _check_path(stat.linkname)
            if first not in self.regular:  # by name, never by a look-up that could pass through a link
                raise ExportRefused(f"refusing the export: '{path}' is a hard link to '{first}', which was not sent")
            os.link(os.path.join(self.staging, first), target, follow_symlinks=False)
            return False
        self.regular.add(path)
        self.files[index] = (path, mode & 0o777, stat.mod_time)
        self.open[index] = open(target, "xb")  # noqa: SIM115  # closed when its last packet comes
        return True

    def _data(self, index: int, data: bytes) -> None:
        file = self.open.get(index)
        if file is None or index not in self.pending:
            raise ExportRefused(f"refusing the export: data for unknown file {index}")
        if data:
            file.write(data)
            self.written += len(data)
            return
        file.close()
        del self.open[index]
        self.pending.discard(index)
        path, mode, mtime = self.files[index]
        target = os.path.join(self.staging, path)
        os.chmod(target, mode)
        os.utime(target, ns=(mtime, mtime))

    def _finish(self) -> None:
        for link in self.links:
            if _leaves(self.links, link):
                raise ExportRefused(f"refusing the export: '{link}' is a link that leads outside the destination "
                                    "through other links")
        for path, mode, mtime in reversed(self.dir_times):  # deepest first: a change inside moves the parent's time
            target = os.path.join(self.staging, path)
            os.chmod(target, mode | 0o700)
            os.utime(target, ns=(mtime, mtime))


def _staging(dest: Path) -> str:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportRefused(f"cannot create the export destination {dest} ({exc.strerror})") from None
    if dest.is_symlink() or not dest.is_dir():
        raise ExportRefused(f"the export destination {dest} is not a folder")
    try:
        return staging_folder(dest)
    except OSError as exc:
        raise ExportRefused(f"cannot write into the export destination {dest} ({exc.strerror})") from None


def receive_into(incoming: Iterable[bytes], dest: str | os.PathLike[str], what: str) -> Iterator[bytes]:
    """The whole `local` export: receive into a staging folder inside `dest`, then merge in.
    Yields the packets to send to the daemon."""
    dest_path = Path(dest)
    staging = _staging(dest_path)
    try:
        new = os.path.join(staging, "new")
        aside = os.path.join(staging, "old")
        os.mkdir(new, 0o700)
        os.mkdir(aside, 0o700)
        receiver = Receiver(new)

        def merge() -> None:
            try:
                merge_into(new, dest_path, aside)
            except Clash as exc:
                raise ExportRefused(f"cannot put {what} into {dest}: {exc}") from None
            except OSError as exc:
                raise ExportRefused(f"cannot put {what} into {dest} ({exc.strerror}); "
                                    "the destination is as it was") from None
            # gone before our FIN: the daemon ends the solve on it, and the caller may look
            shutil.rmtree(staging, ignore_errors=True)

        try:
            yield from receiver.run(incoming, merge)
        except OSError as exc:
            raise ExportRefused(f"cannot write {what} into {dest} ({exc.strerror}); nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class TarFile:
    """A `tar` export written to `path`: the bytes go to a hidden file next to it, renamed
    into place when the stream ends well and removed otherwise. Path `-` is stdout (whose
    reader sees a broken tar if the stream breaks, as with `docker build -o -`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.to_stdout = str(path) == "-"

    def receive(self, chunks: Iterable[bytes]) -> int:
        if self.to_stdout:
            return self._to_stdout(chunks)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            reap_staging(folder)
            fd, temporary = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".tar", dir=folder)
        except OSError as exc:
            raise ExportRefused(f"cannot write the export to {self.path} ({exc.strerror})") from None
        size = 0
        try:
            with os.fdopen(fd, "wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                    size += len(chunk)
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):  # disk full, a folder there...
                raise ExportRefused(f"cannot write the export to {self.path} ({exc.strerror or exc}); "
                                    "nothing was written") from None
            raise
        return size

    @staticmethod
    def _to_stdout(chunks: Iterable[bytes]) -> int:
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # fd 1 itself: the progress goes to stderr meanwhile, and sys.stdout stays unused
                    view = view[os.write(1, view):]
                size += len(chunk)
        except BrokenPipeError:
            raise ExportRefused("the reader of the tar on stdout left before it was complete") from None
        except OSError as exc:
            raise ExportRefused(f"cannot write the export to stdout ({exc.strerror or exc})") from None
        return size


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
