"""One BuildKit solve through the engine's HTTP API: `POST /build?version=2` with a tar of the
context, no session. The engine streams JSON messages; BuildKit's progress travels in them as
base64 protobuf (`moby.buildkit.trace`), the image ID as `moby.image.id`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from ...errors import BuildRejected, EngineError
from ...records import record
from ..client import Engine, explanation
from .wire import StatusResponse, decode_status


@record
class SolveResult:
    image_id: str | None  # from the `moby.image.id` message; None when the solve failed
    error: str | None  # the final errorDetail message, if any


def solve(engine: Engine, context: IO[bytes], *, dockerfile: str, target: str | None = None,
          tags: Sequence[str] = (), build_args: Mapping[str, str] | None = None, no_cache: bool = False,
          network: str | None = None, cache_from: Sequence[str] = (), build_id: str | None = None,
          on_status: Callable[[StatusResponse], object] = lambda status: None) -> SolveResult:
    """Run one BuildKit solve of `dockerfile` (a path inside the `context` tar) and stream its
    progress to `on_status`. `network` is sent as is (see `network_for`).

    Raises BuildRejected when the engine answers with an HTTP error before streaming; a broken
    connection raises the transport's own error (the caller maps it with `engine.errors`).
    Whatever ends the call (the end of the stream, an exception in a callback,
    KeyboardInterrupt) closes the response, and the engine cancels a solve whose connection
    is closed."""
    params: dict[str, Any] = {"version": "2", "dockerfile": dockerfile, "t": list(tags),
                              "buildargs": json.dumps(dict(build_args or {})),
                              "cachefrom": json.dumps(list(cache_from))}
    if target:
        params["target"] = target
    if no_cache:
        params["nocache"] = "1"
    if network:
        params["networkmode"] = network
    if build_id:
        params["buildid"] = build_id
    context.seek(0)
    image_id: str | None = None
    error: str | None = None
    try:
        response = engine.post_stream("/build", params=params, data=context,
                                      headers={"Content-Type": "application/x-tar"})
    except Exception as exc:
        from ..sdk import docker

        if not isinstance(exc, docker.errors.APIError):
            raise
        raise BuildRejected(explanation(exc), exc.status_code) from exc
    try:
        for message in engine.json_stream(response):
            if not isinstance(message, dict):
                continue
            aux = message.get("aux")
            if message.get("id") == "moby.buildkit.trace" and isinstance(aux, str):
                try:
                    status = decode_status(base64.b64decode(aux))
                except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
                    raise EngineError(f"unreadable BuildKit progress from the engine ({exc})") from exc
                on_status(status)
            elif message.get("id") == "moby.image.id" and isinstance(aux, dict):
                image_id = str(aux.get("ID") or "") or None
            elif "errorDetail" in message or "error" in message:
                detail = message.get("errorDetail") or {}
                error = str(detail.get("message") or message.get("error") or "build failed")
    finally:
        response.close()  # closes the connection: the engine cancels an unfinished solve
    if error is not None:
        image_id = None
    return SolveResult(image_id=image_id, error=error)


def cancel(engine: Engine, build_id: str) -> None:
    """Ask the engine to cancel the solve started with `build_id` (a no-op if it has ended)."""
    with engine.errors(f"cancelling build {build_id}"):
        engine.post("/build/cancel", params={"id": build_id})
