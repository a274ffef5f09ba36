"""Protobuf's wire format by hand, for the few messages on the path of every build (a solve's
requests, its progress): importing the protobuf runtime and a generated module costs about
15 ms before the first byte could go out. Pure: bytes in and out. The messages themselves are
defined in `control/proto/*.proto`; tests hold these encodings to the generated modules'."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

VARINT, LENGTH_DELIMITED = 0, 2


class ProtocolError(ValueError):
    """A payload that is not the protobuf message it should be."""


# --- reading ---------------------------------------------------------------------------------


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of one message: an int for varints, bytes for
    length-delimited fields; fixed32/64 fields are skipped (none of ours use them)."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = varint(buf, pos)
            yield number, value
        elif wire == LENGTH_DELIMITED:
            size, pos = varint(buf, pos)
            if pos + size > len(buf):
                raise ProtocolError("truncated length-delimited field")
            yield number, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise ProtocolError("truncated fixed-width field")
        else:  # groups (3, 4) are proto2-only; nothing in control.proto uses them
            raise ProtocolError(f"unsupported wire type {wire}")


def int64(value: int) -> int:
    """A varint read as a signed 64-bit integer (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def string_map(entries: Iterable[int | bytes]) -> dict[str, str]:
    """A `map<string, string>` field's entries (each a message: key 1, value 2)."""
    found: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, bytes):
            raise ProtocolError("a map entry that is not a message")
        key = value = ""
        for number, item in fields(entry):
            if number == 1:
                key = text(item)
            elif number == 2:
                value = text(item)
        found[key] = value
    return found


# --- writing ---------------------------------------------------------------------------------


def varint_bytes(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64's two's complement, ten bytes as protobuf writes it
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_field(number: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, a string's UTF-8 or a message's encoding."""
    return varint_bytes(number << 3 | LENGTH_DELIMITED) + varint_bytes(len(data)) + data


def varint_field(number: int, value: int) -> bytes:
    """A proto3 integer field (0 is the default, and is not written); int64 may be negative."""
    return varint_bytes(number << 3 | VARINT) + varint_bytes(value) if value else b""


def string_field(number: int, value: str) -> bytes:
    """A proto3 string field (the empty string is the default, and is not written)."""
    return message_field(number, value.encode()) if value else b""


def repeated_strings(number: int, values: Iterable[str]) -> bytes:
    return b"".join(message_field(number, value.encode()) for value in values)


def map_field(number: int, mapping: Mapping[str, str]) -> bytes:
    """A `map<string, string>` field: one entry message (key 1, value 2) per item."""
    return b"".join(message_field(number, string_field(1, key) + string_field(2, value))
                    for key, value in mapping.items())


__all__ = ["ProtocolError", "fields", "int64", "map_field", "message_field", "repeated_strings", "string_field",
           "string_map", "text", "varint", "varint_bytes", "varint_field"]
