"""Record real BuildKit build streams for the protocol tests (tests/data/buildkit/*.jsonl).

Regenerate with a running engine (the stand-in busybox image must exist):

    .venv/bin/python tests/buildkit_capture.py            # all scenarios
    .venv/bin/python tests/buildkit_capture.py run_logs   # one

Each file holds the raw JSON messages of one `POST /build?version=2`, one a line, exactly as
the engine sent them; the tests decode them without an engine. Images made here are tagged
`compimg-capture-*` and removed afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from invoke_compimg.building.context import context_tar
from invoke_compimg.engine import buildkit
from invoke_compimg.engine.client import Engine

DATA = Path(__file__).resolve().parent / "data" / "buildkit"

# A multi-stage file exercising what the tests look at: stdout and stderr lines, a partial
# last line, COPY --from, a cache mount, COPY --chmod.
MULTI = """\
# syntax-free: the engine's built-in frontend
FROM busybox AS build
RUN echo out-one && echo err-one >&2 && echo out-two && printf 'no-newline'
RUN --mount=type=cache,target=/cache echo cached-mount > /cache/x && cat /cache/x
COPY --chmod=0751 tool.sh /tool.sh
RUN mkdir -p /out && echo artifact > /out/a.txt

FROM busybox AS run
COPY --from=build /out/a.txt /a.txt
RUN cat /a.txt
"""

FAILING = """\
FROM busybox AS build
RUN echo before-failure && echo to-stderr >&2 && exit 3
"""

SCENARIOS: dict[str, tuple[str, bool]] = {  # name -> (Dockerfile, no_cache)
    "multi_cold": (MULTI, True),
    "multi_cached": (MULTI, False),
    "failing_run": (FAILING, False),
}


class RecordingEngine(Engine):
    """An Engine that keeps every JSON message of the streams it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []

    def json_stream(self, response: Any) -> Iterator[Any]:
        for message in super().json_stream(response):
            if isinstance(message, dict):
                self.messages.append(message)
            yield message


def record(engine: RecordingEngine, dockerfile: str, path: Path, *, no_cache: bool, tag: str) -> buildkit.SolveResult:
    """Run one solve of `dockerfile` (context: tool.sh) and write its raw messages to `path`."""
    engine.messages.clear()
    with tempfile.TemporaryDirectory() as folder:
        tool = Path(folder, "tool.sh")
        tool.write_text("#!/bin/sh\necho tool\n")
        tool.chmod(0o644)
        context = context_tar(folder, ["tool.sh"], [("Dockerfile", dockerfile)])
        with context:
            result = buildkit.solve(engine, context, dockerfile="Dockerfile", tags=[tag], no_cache=no_cache,
                                    network=buildkit.network_for(engine, None))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for message in engine.messages:
            out.write(json.dumps(message, sort_keys=True) + "\n")
    return result


def main(names: list[str]) -> None:
    engine = RecordingEngine()
    api = engine.api
    tag = f"compimg-capture-{uuid.uuid4().hex[:8]}:latest"
    try:
        for name in names or list(SCENARIOS):
            dockerfile, no_cache = SCENARIOS[name]
            result = record(engine, dockerfile, DATA / f"{name}.jsonl", no_cache=no_cache, tag=tag)
            size = os.path.getsize(DATA / f"{name}.jsonl")
            print(f"{name}: {size} bytes, image {result.image_id}, error {result.error}")
    finally:
        if api.images(name=tag.split(":")[0]):
            api.remove_image(tag)


if __name__ == "__main__":
    main(sys.argv[1:])
