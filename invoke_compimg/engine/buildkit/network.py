"""The network a BuildKit solve on this engine runs its steps in (`networkmode`)."""

from __future__ import annotations

import json

from ...errors import UserError
from ..client import Engine

BUILDKIT_NETWORKS = ("default", "none", "host")


def check_network(requested: str | None) -> None:
    """A network mode BuildKit knows (None: the default), or one line saying which it knows."""
    if requested not in (None, *BUILDKIT_NETWORKS):
        raise UserError(f"network {requested!r}: BuildKit builds can use only {', '.join(BUILDKIT_NETWORKS)}")


def network_for(engine: Engine, requested: str | None) -> str | None:
    """The `networkmode` to send. BuildKit knows only default, none and host; `default`
    means the `bridge` network, so on an engine without one (dockerd --bridge=none) a
    build that did not choose a network is sent `none`. Asks the engine once."""
    if requested not in (None, "default"):
        check_network(requested)
        return requested

    def has_bridge() -> bool:  # the SDK's `networks(names=["bridge"])`, through get_json (no SDK import)
        with engine.errors("listing networks"):
            found = engine.get_json("/networks?filters={0}", json.dumps({"name": ["bridge"]}))
        return any(isinstance(n, dict) and n.get("Name") == "bridge" for n in found or [])

    return requested if engine.remember("bridge network", has_bridge) else "none"
