"""The builders, and the one place that picks one (`choose`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dockerfile.model import classic_only
from ..errors import UserError
from .base import Builder, Plan, Sent, Unit, step_failed
from .buildkit import BuildKitBuilder
from .buildkit_service import BuildKitServiceBuilder
from .classic import ClassicBuilder

if TYPE_CHECKING:
    from ..building.specs import ServiceSpec
    from ..dockerfile.model import Graph
    from ..engine.client import Engine

__all__ = ["BuildKitBuilder", "BuildKitServiceBuilder", "Builder", "ClassicBuilder", "Plan", "Sent", "Unit", "choose",
           "step_failed"]


def choose(setting: str, engine: Engine, graph: Graph, service: ServiceSpec | None = None) -> type[Builder]:
    """The builder that runs: on a BuildKit `service` when one is given; else `auto` takes the
    engine's BuildKit where it has one (Docker on Linux) and the file needs nothing only the
    classic builder runs right."""
    if service is not None:
        if setting == "classic":
            raise UserError(f"--builder classic and a BuildKit service ({service.address}) say two things; "
                            "drop one (BUILDKIT_HOST may come from your environment)")
        return BuildKitServiceBuilder
    kind = engine.kind
    if setting == "auto":
        return BuildKitBuilder if kind.buildkit and not classic_only(graph.stages) else ClassicBuilder
    if setting == "buildkit" and not kind.buildkit:
        raise UserError(f"--builder buildkit: {kind.name} at {engine.address} offers no BuildKit; "
                        "use --builder classic (or auto)")
    builders: dict[str, type[Builder]] = {"buildkit": BuildKitBuilder, "classic": ClassicBuilder}
    return builders[setting]
