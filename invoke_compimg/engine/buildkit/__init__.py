"""The engine's BuildKit: its progress message (`wire`), merged into printable events
(`progress`), and one solve through the engine's HTTP API (`solve`)."""

from .http_solve import SolveResult, cancel, network_for, solve
from .progress import Progress, ProgressEvent, StepName, merge_vertex, parse_name
from .wire import ProtocolError, StatusResponse, Vertex, VertexLog, VertexWarning, decode_status

__all__ = [
    "Progress",
    "ProgressEvent",
    "ProtocolError",
    "SolveResult",
    "StatusResponse",
    "StepName",
    "Vertex",
    "VertexLog",
    "VertexWarning",
    "cancel",
    "decode_status",
    "merge_vertex",
    "network_for",
    "parse_name",
    "solve",
]
