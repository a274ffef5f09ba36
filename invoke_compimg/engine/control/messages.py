"""The Control messages every solve sends and reads, written by hand in protobuf's wire format
(see `protowire`): SolveRequest, StatusRequest and SolveResponse, with control.proto's field
numbers. The rest of the API (ListWorkers, the session's services) goes through the generated
modules, imported when used, after the solve is on its way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..protowire import fields, map_field, message_field, repeated_strings, string_field, string_map

CONTROL = "/moby.buildkit.v1.Control/"
SOLVE = CONTROL + "Solve"
STATUS = CONTROL + "Status"
SESSION = CONTROL + "Session"
LIST_WORKERS = CONTROL + "ListWorkers"

# (type, attrs) of one cache import or export (CacheOptionsEntry)
CacheOption = tuple[str, Mapping[str, str]]


def solve_request(*, ref: str, frontend: str = "", frontend_attrs: Mapping[str, str] | None = None,
                  session: str = "", exporter: str = "", exporter_attrs: Mapping[str, str] | None = None,
                  cache_imports: Sequence[CacheOption] = (), cache_exports: Sequence[CacheOption] = (),
                  entitlements: Sequence[str] = ()) -> bytes:
    """A SolveRequest (Ref 1, Exporter 3, ExporterAttrs 4, Session 5, Frontend 6,
    FrontendAttrs 7, Cache 8, Entitlements 9). Cache is always there, empty or not, as the
    generated module writes a submessage that was set."""
    def entries(number: int, options: Sequence[CacheOption]) -> bytes:
        return b"".join(message_field(number, string_field(1, kind) + map_field(2, attrs)) for kind, attrs in options)

    cache = entries(4, cache_exports) + entries(5, cache_imports)  # CacheOptions: Exports 4, Imports 5
    return b"".join((
        string_field(1, ref), string_field(3, exporter), map_field(4, exporter_attrs or {}),
        string_field(5, session), string_field(6, frontend), map_field(7, frontend_attrs or {}),
        message_field(8, cache), repeated_strings(9, entitlements)))


def status_request(ref: str) -> bytes:
    """A StatusRequest (Ref 1)."""
    return string_field(1, ref)


def solve_response(payload: bytes) -> dict[str, str]:
    """A SolveResponse's ExporterResponse (field 1, a map). Raises ProtocolError."""
    return string_map(item for number, item in fields(payload) if number == 1)


__all__ = ["LIST_WORKERS", "SESSION", "SOLVE", "STATUS", "CacheOption", "solve_request", "solve_response",
           "status_request"]
