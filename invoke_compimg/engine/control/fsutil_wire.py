"""fsutil's Packet and Stat (`proto/fsutil.proto`) on the wire, by hand: FileSync.DiffCopy (the
context, sent) and FileSend.DiffCopy (a local export, received) carry one per message.

By hand for two reasons. A file name on Unix is bytes, not always UTF-8, and fsutil sends it
as it is; protobuf's Python runtime cannot put such a name in a `string` field, nor read one
(a context holding `caf\\xe9` failed the build). Here a name goes out as its bytes
(`os.fsencode`) and comes back as Python's own file-name string (`os.fsdecode`). And a build's
FileSync then runs without protobuf's runtime. Pure: bytes in and out; tests hold these
encodings to the generated module's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ...records import record
from ..protowire import ProtocolError, fields, int64, message_field, varint_field
from .fswalk import Entry

# Packet.PacketType
STAT, REQ, DATA, FIN, ERR = 0, 1, 2, 3, 4
END_OF_STATS = b""  # a STAT packet without a stat: the listing is over (every field at its default)
FIN_PACKET = varint_field(1, FIN)
_DATA_TYPE = varint_field(1, DATA)


@record
class Stat:
    """One entry as the other side described it (`path` and `linkname` decoded as the file
    system's names are, so that bytes that are not UTF-8 come back as they went)."""

    path: str
    mode: int = 0  # Go os.FileMode bits
    uid: int = 0
    gid: int = 0
    size: int = 0
    mod_time: int = 0  # nanoseconds
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] | None = None


@record
class Packet:
    type: int
    id: int = 0
    data: bytes = b""
    stat: Stat | None = None  # (STAT packets; None at the end of the listing)


def stat_packet(entry: Entry) -> bytes:
    """The STAT packet describing `entry`."""
    stat = b"".join((
        message_field(1, os.fsencode(entry.path)) if entry.path else b"", varint_field(2, entry.mode),
        varint_field(3, entry.uid), varint_field(4, entry.gid), varint_field(5, entry.size),
        varint_field(6, entry.mtime_ns),
        message_field(7, os.fsencode(entry.linkname)) if entry.linkname else b"",
        varint_field(8, entry.devmajor), varint_field(9, entry.devminor),
        *(message_field(10, message_field(1, os.fsencode(key)) + message_field(2, value))  # (a map entry: both always)
          for key, value in entry.xattrs.items())))
    return message_field(2, stat)  # (type STAT is the default: not written)


def data_packet(packet_id: int, data: bytes = b"") -> bytes:
    """A DATA packet of file `packet_id` (empty: the file is over)."""
    return b"".join((_DATA_TYPE, varint_field(3, packet_id), message_field(4, data) if data else b""))


def request_packet(packet_id: int) -> bytes:
    return varint_field(1, REQ) + varint_field(3, packet_id)


def decode(message: bytes) -> Packet:
    """One Packet (ProtocolError if it is not one)."""
    kind = packet_id = 0
    data = b""
    stat: Stat | None = None
    for number, value in fields(message):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, bytes):
            stat = _stat(value)
        elif number == 3 and isinstance(value, int):
            packet_id = value & 0xFFFFFFFF
        elif number == 4 and isinstance(value, bytes):
            data = value
        elif number in (1, 2, 3, 4):
            raise ProtocolError(f"fsutil Packet field {number} has the wrong wire type")
    return Packet(kind, packet_id, data, stat)


def _stat(message: bytes) -> Stat:
    found: dict[str, object] = {}
    xattrs: dict[str, bytes] = {}
    names = {2: "mode", 3: "uid", 4: "gid", 5: "size", 6: "mod_time", 8: "devmajor", 9: "devminor"}
    for number, value in fields(message):
        if number in (1, 7) and isinstance(value, bytes):
            found["path" if number == 1 else "linkname"] = os.fsdecode(value)
        elif number in names and isinstance(value, int):
            found[names[number]] = value & 0xFFFFFFFF if number <= 4 else int64(value)
        elif number == 10 and isinstance(value, bytes):
            key, item = "", b""
            for part, got in fields(value):
                if part == 1 and isinstance(got, bytes):
                    key = os.fsdecode(got)
                elif part == 2 and isinstance(got, bytes):
                    item = got
            xattrs[key] = item
        elif number in (1, 7, 10) or number in names:
            raise ProtocolError(f"fsutil Stat field {number} has the wrong wire type")
    return Stat(path=str(found.pop("path", "")), xattrs=xattrs or None, **found)  # type: ignore[arg-type]


__all__ = ["DATA", "END_OF_STATS", "ERR", "FIN", "FIN_PACKET", "REQ", "STAT", "Packet", "Stat", "data_packet",
           "decode", "request_packet", "stat_packet"]
