"""fsutil's diff-copy, send side: how FileSync.DiffCopy hands a dir to the daemon.

The protocol (tonistiigi/fsutil send.go): we send one STAT packet per entry, in walk order,
then an empty STAT (no `stat`) to say the listing is over. The daemon, as it reads stats,
asks for the data of regular files with REQ packets carrying the entry's index in the
listing; we answer with DATA packets of that ID, ending each file with an empty DATA
packet. When it has all it wants it sends FIN, and we answer FIN. ERR carries a message.

Narrowness: only indexes of regular files we listed may be requested, each once; anything
else ends the stream with an error and nothing more is sent. Files are opened with
`fswalk.open_beneath`. This module knows nothing of gRPC: `run` takes the incoming packets
and yields the outgoing ones, so tests drive it with a fake stream.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Generator, Iterable, Iterator

from ...records import record
from .fsutil_wire import END_OF_STATS, ERR, FIN, FIN_PACKET, REQ, data_packet, decode, stat_packet
from .fswalk import Entry

CHUNK = 1 << 20  # fsutil sends 32 KiB; 1 MiB packets halve our CPU per byte (the daemon takes up to 4 MiB)


class Refused(Exception):
    """The daemon asked for something this dir does not serve."""


@record(frozen=False)
class _Incoming:
    kind: str  # "req", "fin", "err", "end"
    id: int = 0
    text: str = ""


class Sender:
    """One DiffCopy from our side. `root` is the folder that `Entry.source` paths are
    relative to (None when every entry is virtual)."""

    def __init__(self, entries: list[Entry], root: str | None) -> None:
        self.entries = entries
        self.root = root
        self.sent_bytes = 0
        self.files_sent = 0

    def run(self, incoming: Iterable[bytes]) -> Iterator[bytes]:
        """The packets to send, given the packets the daemon sends (read on a thread of ours
        while stats go out); fsutil Packets, encoded (`fsutil_wire`). Raises Refused on a
        request we do not serve."""
        events: queue.Queue[_Incoming] = queue.Queue()
        reader = threading.Thread(target=_read, args=(incoming, events), name="compimg-filesync-read", daemon=True)
        reader.start()
        served: set[int] = set()
        for entry in self.entries:
            yield stat_packet(entry)
            # serve requests as they come, as fsutil does on other goroutines: the daemon
            # may stop reading stats until it has some data
            while not events.empty():
                done = yield from self._answer(events.get(), served)
                if done:
                    return
        yield END_OF_STATS
        while True:
            done = yield from self._answer(events.get(), served)
            if done:
                return

    def _answer(self, event: _Incoming, served: set[int]) -> Generator[bytes, None, bool]:
        """Packets answering one incoming event; returns True when the stream is over."""
        if event.kind == "req":
            if event.id in served or not 0 <= event.id < len(self.entries):
                raise Refused(f"invalid file request {event.id}")
            entry = self.entries[event.id]
            if not entry.requestable:
                raise Refused(f"invalid file request {event.id}: {entry.path!r} is not a regular file")
            served.add(event.id)
            yield from self._data(event.id, entry)
            return False
        if event.kind == "fin":
            yield FIN_PACKET
            return True
        if event.kind == "err":
            raise Refused(f"error from receiver: {event.text}")
        return True  # the daemon closed the stream without FIN: it has what it wanted

    def _data(self, packet_id: int, entry: Entry) -> Iterator[bytes]:
        if isinstance(entry.source, bytes):
            for start in range(0, len(entry.source), CHUNK):
                yield data_packet(packet_id, entry.source[start:start + CHUNK])
            self.sent_bytes += len(entry.source)
        elif isinstance(entry.source, str) and self.root is not None:
            from .fswalk import open_beneath

            fd = open_beneath(self.root, entry.source)
            with os.fdopen(fd, "rb", buffering=0) as file:
                while chunk := file.read(CHUNK):
                    self.sent_bytes += len(chunk)
                    yield data_packet(packet_id, chunk)
        self.files_sent += 1
        yield data_packet(packet_id)


def _read(incoming: Iterable[bytes], events: queue.Queue[_Incoming]) -> None:
    try:
        for message in incoming:
            packet = decode(message)
            if packet.type == REQ:
                events.put(_Incoming("req", packet.id))
            elif packet.type == FIN:
                events.put(_Incoming("fin"))
                return
            elif packet.type == ERR:
                events.put(_Incoming("err", text=packet.data.decode("utf-8", "replace")))
                return
    except Exception:  # the stream broke or was cancelled: the send side ends too
        pass
    events.put(_Incoming("end"))
