"""The builders, and the one place that picks one (`choose`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dockerfile.model import classic_only
from ..errors import UserError
from .base import Builder, Plan, Sent, Unit, step_failed
from .buildkit import BuildKitBuilder
from .classic import ClassicBuilder

if TYPE_CHECKING:
    from ..dockerfile.model import Graph
    from ..engine.client import Engine

__all__ = ["BuildKitBuilder", "Builder", "ClassicBuilder", "Plan", "Sent", "Unit", "choose", "step_failed"]


def choose(setting: str, engine: Engine, graph: Graph) -> type[Builder]:
    """The builder that runs: `auto` takes the engine's BuildKit where it has one (Docker on
    Linux) and the file needs nothing only the classic builder runs right."""
    kind = engine.kind
    if setting == "auto":
        return BuildKitBuilder if kind.buildkit and not classic_only(graph.stages) else ClassicBuilder
    if setting == "buildkit" and not kind.buildkit:
        raise UserError(f"--builder buildkit: {kind.name} at {engine.address} offers no BuildKit; "
                        "use --builder classic (or auto)")
    builders: dict[str, type[Builder]] = {"buildkit": BuildKitBuilder, "classic": ClassicBuilder}
    return builders[setting]
