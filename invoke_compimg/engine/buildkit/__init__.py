"""The engine's BuildKit: its progress message (`wire`), merged into printable events
(`progress`), and one solve through the engine's HTTP API (`http_solve`).

The names are imported from their module when first used: a build with a session never
needs `http_solve`, and each import is start-up time before the solve is sent."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for the type checker
    from .http_solve import SolveResult, cancel, solve
    from .network import network_for
    from .progress import Progress, ProgressEvent, StepName, merge_vertex, parse_name
    from .wire import ProtocolError, StatusResponse, Vertex, VertexLog, VertexWarning, decode_status

_HOMES = {
    "SolveResult": "http_solve", "cancel": "http_solve", "network_for": "network", "solve": "http_solve",
    "Progress": "progress", "ProgressEvent": "progress", "StepName": "progress", "merge_vertex": "progress",
    "parse_name": "progress",
    "ProtocolError": "wire", "StatusResponse": "wire", "Vertex": "wire", "VertexLog": "wire",
    "VertexWarning": "wire", "decode_status": "wire",
}

__all__ = [
    "Progress", "ProgressEvent", "ProtocolError", "SolveResult", "StatusResponse", "StepName", "Vertex",
    "VertexLog", "VertexWarning", "cancel", "decode_status", "merge_vertex", "network_for", "parse_name", "solve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
