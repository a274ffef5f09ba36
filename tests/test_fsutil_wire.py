"""fsutil's Packet and Stat by hand (`fsutil_wire`) against the generated protobuf module, and
names that are not UTF-8, which only the hand encoding can carry. No engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoke_compimg.engine.control import fsutil_wire
from invoke_compimg.engine.control.diffcopy_receive import ExportRefused, receive_into
from invoke_compimg.engine.control.fswalk import GO_DIR, GO_SYMLINK, Entry
from invoke_compimg.engine.control.proto import fsutil_pb2
from invoke_compimg.engine.protowire import ProtocolError

Packet = fsutil_pb2.Packet

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
entries = st.builds(Entry, path=names, mode=uint32, uid=uint32, gid=uint32, size=int64, mtime_ns=int64,
                    linkname=st.one_of(st.just(""), names), devmajor=int64, devminor=int64,
                    xattrs=st.one_of(st.just({}), st.dictionaries(st.sampled_from(["user.a", "security.b"]),
                                                                  st.binary(max_size=4), max_size=1)))


def _generated(entry: Entry) -> Packet:
    stat = fsutil_pb2.Stat(path=entry.path, mode=entry.mode, uid=entry.uid, gid=entry.gid, size=entry.size,
                           modTime=entry.mtime_ns, linkname=entry.linkname, devmajor=entry.devmajor,
                           devminor=entry.devminor)
    for key, value in entry.xattrs.items():
        stat.xattrs[key] = value
    return Packet(type=Packet.PACKET_STAT, stat=stat)


@given(entries)
def test_a_stat_is_encoded_as_protobuf_encodes_it(entry: Entry) -> None:
    assert fsutil_wire.stat_packet(entry) == _generated(entry).SerializeToString()


@given(entries)
def test_a_stat_reads_back_as_protobuf_wrote_it(entry: Entry) -> None:
    packet = fsutil_wire.decode(_generated(entry).SerializeToString())
    assert packet.type == fsutil_wire.STAT and packet.stat is not None
    stat = packet.stat
    assert (stat.path, stat.mode, stat.uid, stat.gid, stat.size, stat.mod_time, stat.linkname, stat.devmajor,
            stat.devminor, dict(stat.xattrs or {})) == (*entry[:9], dict(entry.xattrs))


@given(st.integers(0, 2**32 - 1), st.binary(max_size=40))
def test_the_other_packets(packet_id: int, data: bytes) -> None:
    assert fsutil_wire.data_packet(packet_id, data) == \
        Packet(type=Packet.PACKET_DATA, ID=packet_id, data=data).SerializeToString()
    assert fsutil_wire.request_packet(packet_id) == Packet(type=Packet.PACKET_REQ, ID=packet_id).SerializeToString()
    assert Packet(type=Packet.PACKET_FIN).SerializeToString() == fsutil_wire.FIN_PACKET
    assert Packet(type=Packet.PACKET_STAT).SerializeToString() == fsutil_wire.END_OF_STATS
    read = fsutil_wire.decode(Packet(type=Packet.PACKET_DATA, ID=packet_id, data=data).SerializeToString())
    error = fsutil_wire.decode(Packet(type=Packet.PACKET_ERR, data=data).SerializeToString())
    assert (error.type, error.data) == (fsutil_wire.ERR, data)
    assert (read.type, read.id, read.data, read.stat) == (fsutil_wire.DATA, packet_id, data, None)
    assert fsutil_wire.decode(fsutil_wire.END_OF_STATS) == fsutil_wire.Packet(fsutil_wire.STAT)


def test_names_that_are_not_utf8_go_as_their_bytes() -> None:
    name = os.fsdecode(b"caf\xe9/\xff.txt")
    message = fsutil_wire.stat_packet(Entry(name, 0o644, linkname=os.fsdecode(b"\xe9")))
    assert b"caf\xe9/\xff.txt" in message
    with pytest.raises(Exception):  # noqa: B017 - what protobuf's runtime makes of it
        Packet.FromString(message)
    stat = fsutil_wire.decode(message).stat
    assert stat is not None and os.fsencode(stat.path) == b"caf\xe9/\xff.txt" and os.fsencode(stat.linkname) == b"\xe9"


def test_not_a_packet() -> None:
    for junk in (b"\x0a", b"\x12\x05ab", b"\x08\xff", b"\x0a\x01x"):  # truncated, a string where a number goes
        with pytest.raises(ProtocolError):
            fsutil_wire.decode(junk)


def _export(stats: list[bytes], contents: dict[int, bytes], dest: Path) -> None:
    """Play the daemon of a local export: the stats, then each file's data, then FIN."""
    def incoming() -> list[bytes]:
        messages = [*stats, fsutil_wire.END_OF_STATS]
        for index, data in contents.items():
            messages += [fsutil_wire.data_packet(index, data), fsutil_wire.data_packet(index)]
        return [*messages, fsutil_wire.FIN_PACKET]

    sent = list(receive_into(incoming(), dest, "the export"))
    assert sent[-1] == fsutil_wire.FIN_PACKET


def test_an_export_writes_names_that_are_not_utf8(tmp_path: Path) -> None:
    folder, file = os.fsdecode(b"d\xe9"), os.fsdecode(b"d\xe9/f\xff")
    link = os.fsdecode(b"l\xe9")
    stats = [fsutil_wire.stat_packet(Entry(folder, GO_DIR | 0o755)), fsutil_wire.stat_packet(Entry(file, 0o640)),
             fsutil_wire.stat_packet(Entry(link, GO_SYMLINK | 0o777, linkname=file))]
    _export(stats, {1: b"bytes\n"}, tmp_path / "out")
    out = os.fsencode(tmp_path / "out")
    assert sorted(os.listdir(out)) == [b"d\xe9", b"l\xe9"]
    with open(os.path.join(out, b"d\xe9", b"f\xff"), "rb") as read:
        assert read.read() == b"bytes\n"
    assert os.readlink(os.path.join(out, b"l\xe9")) == b"d\xe9/f\xff"


def test_an_export_refuses_a_nul_byte(tmp_path: Path) -> None:
    for entry in (Entry("a\0b", 0o644), Entry("l", GO_SYMLINK | 0o777, linkname="x\0")):
        with pytest.raises(ExportRefused, match=r"NUL|clean relative"):
            _export([fsutil_wire.stat_packet(entry)], {}, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_the_session_services_paths_are_our_protos() -> None:
    from invoke_compimg.engine.control.proto import auth_pb2, filesync_pb2, secrets_pb2, sshforward_pb2
    from invoke_compimg.engine.control.session import PATHS

    def path(module: object, service: str, method: str) -> str:
        found = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
        return f"/{found.full_name}/{found.methods_by_name[method].name}"

    assert {k: v for k, v in PATHS.items() if k != "session"} == {
        "filesync": path(filesync_pb2, "FileSync", "DiffCopy"), "filesend": path(filesync_pb2, "FileSend", "DiffCopy"),
        "secret": path(secrets_pb2, "Secrets", "GetSecret"), "ssh_check": path(sshforward_pb2, "SSH", "CheckAgent"),
        "ssh_forward": path(sshforward_pb2, "SSH", "ForwardAgent"),
        "credentials": path(auth_pb2, "Auth", "Credentials")}


@given(st.binary(max_size=40))
def test_a_bytes_message_by_hand(data: bytes) -> None:
    from invoke_compimg.engine.control.proto import control_pb2
    from invoke_compimg.engine.control.session import _unwrap_one, _wrap

    assert _wrap(data) == control_pb2.BytesMessage(data=data).SerializeToString()
    assert _unwrap_one(control_pb2.BytesMessage(data=data).SerializeToString()) == data
