"""The engine's classic builder: one `POST /build` of a single-stage Dockerfile, its stream
of JSON messages decoded into log lines and errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import IO

from ..records import record
from .client import Engine


@record
class BuildEvent:
    """One decoded message of a classic build stream."""

    kind: str  # "log" or "error"
    text: str


def build(engine: Engine, archive: IO[bytes], *, dockerfile: str, build_args: Mapping[str, str],
          no_cache: bool, network: str | None, cache_from: tuple[str, ...] = (), tag: str | None = None,
          platform: str | None = None, on_event: Callable[[BuildEvent], None]) -> str | None:
    """Send one single-stage build; return the image ID from the `aux` message, or None
    when the stream ended without one (the error events say why). Transport and API errors
    are the caller's to map (`engine.errors`)."""
    image_id: str | None = None
    archive.seek(0)
    stream = engine.api.build(
        fileobj=archive, custom_context=True, dockerfile=dockerfile,
        rm=True, forcerm=True, decode=True, nocache=no_cache, pull=False,
        buildargs=dict(build_args), network_mode=network, cache_from=list(cache_from) or None, tag=tag,
        platform=platform,
    )
    for message in stream:
        if not isinstance(message, dict):
            continue
        if "error" in message or "errorDetail" in message:
            detail = message.get("errorDetail") or {}
            text = message.get("error") or detail.get("message") or "build failed"
            on_event(BuildEvent("error", str(text)))
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        if isinstance(message.get("stream"), str):
            on_event(BuildEvent("log", message["stream"]))
        elif isinstance(message.get("status"), str):
            on_event(BuildEvent("log", message["status"] + "\n"))
    return image_id
