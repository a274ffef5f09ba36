"""The builders, and the one place that picks one (`choose`). Each builder's module (with the
engine calls and progress decoding it needs) is imported when it is chosen: a run uses one."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..dockerfile.model import classic_only
from ..errors import UserError
from .base import Builder, Plan, Sent, Unit, step_failed

if TYPE_CHECKING:
    from ..building.specs import ServiceSpec
    from ..dockerfile.model import Graph
    from ..engine.client import Engine

__all__ = ["BuildKitBuilder", "BuildKitServiceBuilder", "Builder", "ClassicBuilder", "Plan", "Sent", "Unit", "choose",
           "step_failed"]


_MODULES = {"BuildKitBuilder": "buildkit", "BuildKitServiceBuilder": "buildkit_service", "ClassicBuilder": "classic"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(name)


def choose(setting: str, engine: Engine, graph: Graph, service: ServiceSpec | None = None) -> type[Builder]:
    """The builder that runs: on a BuildKit `service` when one is given; else `auto` takes the
    engine's BuildKit where it has one (Docker on Linux) and the file needs nothing only the
    classic builder runs right."""
    if service is not None:
        if setting == "classic":
            raise UserError(f"--builder classic and a BuildKit service ({service.address}) say two things; "
                            "drop one (BUILDKIT_HOST may come from your environment)")
        return __getattr__("BuildKitServiceBuilder")  # type: ignore[no-any-return]
    kind = engine.kind
    if setting == "auto":
        setting = "buildkit" if kind.buildkit and not classic_only(graph.stages) else "classic"
    elif setting == "buildkit" and not kind.buildkit:
        raise UserError(f"--builder buildkit: {kind.name} at {engine.address} offers no BuildKit; "
                        "use --builder classic (or auto)")
    return __getattr__({"buildkit": "BuildKitBuilder", "classic": "ClassicBuilder"}[setting])  # type: ignore[no-any-return]
