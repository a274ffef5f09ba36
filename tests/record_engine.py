"""Record the engine scenarios the fast tests replay (tests/data/engine/<scenario>.jsonl).

Needs the real engine and the stand-in images (scripts/engine); the `registry` scenario
starts Debian's docker-registry on a loopback port. Run it after a change to what the code
sends, or to record a new scenario (tests/engine_scenarios.py):

    .venv/bin/python tests/record_engine.py              # every scenario
    .venv/bin/python tests/record_engine.py shell        # some

Each scenario runs through `fake_engine.RecordingProxy` in front of the engine; everything it
made (its projects' images and containers, its unique tags) is removed afterwards, directly.
The scenarios in engine_scenarios.REFUSES_GRPC are recorded with the proxy refusing `POST
/grpc` as the engine refuses a path it does not serve (BuildKit then solves with a tar).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import engine_scenarios  # noqa: E402
import fake_engine  # noqa: E402
import peers  # noqa: E402

from invoke_compimg.engine.client import Engine  # noqa: E402
from invoke_compimg.host.artifacts import clean  # noqa: E402


def record(name: str) -> Path:
    proxy = fake_engine.RecordingProxy(refuse_grpc=name in engine_scenarios.REFUSES_GRPC)
    with tempfile.TemporaryDirectory(prefix="compimg-record-") as folder, contextlib.ExitStack() as stack:
        registry = (stack.enter_context(peers.registry_running()) if name in engine_scenarios.NEEDS_REGISTRY
                    else engine_scenarios.REPLAY_REGISTRY)
        engine = proxy.engine()
        world = engine_scenarios.World(engine, Path(folder), proxy, recording=True, registry=registry)
        try:
            started = time.monotonic()
            seen = engine_scenarios.SCENARIOS[name](world)
            engine.close()  # its gRPC connection, and the sessions on it, end here
            proxy.settle()
            path = proxy.save(name, world.exact)
            print(f"{name}: {len(proxy.exchanges)} exchanges, {len(proxy.calls)} gRPC calls in "
                  f"{time.monotonic() - started:.1f}s -> "
                  f"{path.relative_to(HERE.parent)}")
            for key, value in seen.items():
                print(f"  {key}: {str(value)[:160]!s}")
        finally:
            engine.close()
            proxy.close()
            tidy(world)
    return path


def tidy(world: engine_scenarios.World) -> None:
    """Remove what the scenario made, straight on the engine (not recorded)."""
    with Engine() as engine:
        api = engine.api
        for project in world.projects:
            for container in api.containers(all=True, filters={"label": f"compimg.project={project.slug}"}):
                api.remove_container(container["Id"], force=True)
            clean(project.slug, engine, io.StringIO())
        for ref in world.made:
            for image in api.images():
                for tag in image.get("RepoTags") or []:
                    if tag.startswith(ref):
                        with contextlib.suppress(Exception):
                            api.remove_image(tag, force=True)


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in engine_scenarios.SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(engine_scenarios.SCENARIOS)}")
    for name in names or list(engine_scenarios.SCENARIOS):
        record(name)


if __name__ == "__main__":
    main(sys.argv[1:])
