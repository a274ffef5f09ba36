"""Where each tool's time goes on one bench workload: start-up, the engine's solve, the end.

    python benchmarks/timeline.py [--runs N] [--verbose] WORKLOAD

Builds `bench.py`'s WORKLOAD (hello, chain, editloop, ...) with compimg's BuildKit builder and
with `DOCKER_BUILDKIT=1 docker build --network=none`, interleaved (cold: `--no-cache`;
editloop: one file edited before each build, as bench.py does), and splits each build's wall
time in three, on the same clock:

- start: from starting the process to its solve request (compimg: `Control.solve` called;
  docker: its `POST /build` reaching a socket proxy put between the client and the engine);
- engine: from that request to the last step's end, in the engine's own progress timestamps
  (compimg's Status stream; docker's `moby.buildkit.trace` messages, seen by the proxy);
- end: from there to the process's exit.

It prints each run and the medians; `--verbose` also prints every step's start and end. The
docker client runs with `--progress=plain` here (with `-q` the engine sends no progress);
compimg with `--progress plain`, as in bench.py. A script, run on demand, never a test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

from invoke_compimg.engine.buildkit.progress import Progress
from invoke_compimg.engine.buildkit.wire import Vertex, decode_status

ENGINE_SOCKET = "/var/run/docker.sock"

# Run in compimg's process: the time `Control.solve` is called, and the Status stream's messages
# as they came (read here, after the process ends), written to stderr as one JSON line at its end.
PROBE = r"""
import atexit, base64, json, sys, time
from invoke_compimg.engine.buildkit import wire
from invoke_compimg.engine.control import client
marks, status = {}, []
decode = wire.decode_status
wire.decode_status = lambda payload: (status.append(base64.b64encode(payload).decode()), decode(payload))[1]
solve = client.Control.solve
def timed_solve(*args, **kwargs):
    marks.setdefault("request", time.time())
    return solve(*args, **kwargs)
client.Control.solve = timed_solve
atexit.register(lambda: sys.stderr.write("TIMELINE " + json.dumps({**marks, "status": status}) + "\n"))
from invoke_compimg.tasks.cli import run
sys.argv[0] = "compimg"
run()
"""


class Proxy:
    """A unix socket in front of the engine's: notes when a `/build` request passes and keeps
    the answer to it (the progress), for the docker client pointed at it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.builds: list[tuple[float, list[bytes]]] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(ENGINE_SOCKET)
        kept: list[list[bytes] | None] = [None]  # the answer being kept on this connection

        def upward() -> None:
            while data := client.recv(1 << 16):
                if b"/build?" in data.split(b"\r\n", 1)[0]:  # (the client reuses connections)
                    kept[0] = []
                    self.builds.append((time.time(), kept[0]))
                engine.sendall(data)
            engine.shutdown(socket.SHUT_WR)

        threading.Thread(target=upward, daemon=True).start()
        try:
            while data := engine.recv(1 << 16):
                if kept[0] is not None:
                    kept[0].append(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()


def _steps(status: Iterable[str]) -> list[Vertex]:
    """The vertexes of a build's progress (StatusResponses, base64), merged as compimg shows them."""
    progress = Progress()
    for payload in status:
        progress.feed(decode_status(base64.b64decode(payload)))
    return list(progress.vertexes.values())


def _trace_of_answer(raw: bytes) -> list[str]:
    """The progress (base64 StatusResponses) in a `/build` answer (chunked JSON messages)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        joined, at = bytearray(), 0
        while (size := int(body[at:body.index(b"\r\n", at)], 16)) > 0:
            start = body.index(b"\r\n", at) + 2
            joined += body[start:start + size]
            at = start + size + 2
        body = bytes(joined)
    messages = [json.loads(line) for line in body.split(b"\n") if line.strip()]
    return [m["aux"] for m in messages if m.get("id") == "moby.buildkit.trace"]


def _split(started: float, request: float, steps: list[Vertex], ended: float) -> dict[str, object]:
    last = max(s.completed for s in steps if s.completed is not None)
    return {"start": request - started, "engine": last - request, "end": ended - last, "total": ended - started,
            "steps": steps, "request": request}


def run_compimg(folder: Path, cold: bool) -> dict[str, object]:
    command = [sys.executable, "-c", PROBE, "-f", "seed.Dockerfile", "build", "--builder", "buildkit",
               "--progress", "plain", *(["--no-cache"] if cold else [])]
    os.sync()
    started = time.time()
    result = subprocess.run(command, cwd=folder, env=bench.USER_ENVIRONMENT, capture_output=True, text=True)
    ended = time.time()
    found = [line for line in result.stderr.splitlines() if line.startswith("TIMELINE ")]
    if result.returncode or not found:
        raise SystemExit(f"timeline: compimg failed:\n{result.stderr[-2000:]}")
    probe = json.loads(found[-1][len("TIMELINE "):])
    return _split(started, probe["request"], _steps(probe["status"]), ended)


def run_docker(folder: Path, proxy: Proxy, tag: str, cold: bool) -> dict[str, object]:
    env = {**bench.USER_ENVIRONMENT, "DOCKER_BUILDKIT": "1", "DOCKER_HOST": f"unix://{proxy.path}"}
    command = [bench.DOCKER, "build", "--progress=plain", "--network=none", *(["--no-cache"] if cold else []),
               "-f", "native.Dockerfile", "-t", tag, "."]
    proxy.builds.clear()
    os.sync()
    started = time.time()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    ended = time.time()
    if result.returncode or not proxy.builds:
        raise SystemExit(f"timeline: docker build failed:\n{result.stderr[-2000:]}")
    request, answer = proxy.builds[0]
    return _split(started, request, _steps(_trace_of_answer(b"".join(answer))), ended)


def _show(tool: str, run: dict[str, object], verbose: bool) -> None:
    print(f"{tool:8s} total {run['total']:.3f}  start {run['start']:.3f}  engine {run['engine']:.3f}  "
          f"end {run['end']:.3f}", flush=True)
    if verbose:
        steps: list[Vertex] = run["steps"]  # type: ignore[assignment]
        request = float(run["request"])  # type: ignore[arg-type]
        for step in sorted(steps, key=lambda s: s.started or 0):
            at = [f"{t - request:+.3f}" if t is not None else "   -  " for t in (step.started, step.completed)]
            print(f"           {step.name[:60]:60s} {at[0]} {at[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(bench.WORKLOADS))
    parser.add_argument("--runs", type=int, default=6, help="builds per tool (interleaved; medians)")
    parser.add_argument("--verbose", action="store_true", help="every step's start and end, from the request")
    args = parser.parse_args()
    tag = f"compimg-timeline-{os.getpid()}"
    import docker

    api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    dangling_before = set(api.images(filters={"dangling": True}, quiet=True))
    with tempfile.TemporaryDirectory(prefix="compimg-timeline-") as tmp:
        folder = Path(tmp)
        seed, native = bench.WORKLOADS[args.workload](folder)
        (folder / "seed.Dockerfile").write_text(seed)
        (folder / "native.Dockerfile").write_text(native)
        proxy = Proxy(str(folder.parent / f"{folder.name}.sock"))
        edit = bench._Editor(folder) if args.workload == "editloop" else None
        cold = edit is None
        runs: dict[str, list[dict[str, object]]] = {"compimg": [], "docker": []}
        try:
            if edit is not None:  # the first build of each sends the whole tree: not an edit
                run_compimg(folder, False)
                run_docker(folder, proxy, tag, False)
            for round_ in range(args.runs):
                for tool in (("compimg", "docker") if round_ % 2 == 0 else ("docker", "compimg")):
                    if edit is not None:
                        edit()
                    run = run_compimg(folder, cold) if tool == "compimg" else run_docker(folder, proxy, tag, cold)
                    runs[tool].append(run)
                    _show(tool, run, args.verbose)
        finally:
            subprocess.run([*bench.COMPIMG, "-f", "seed.Dockerfile", "clean"], cwd=folder, capture_output=True)
            subprocess.run([bench.DOCKER, "rmi", tag], capture_output=True)
            os.unlink(proxy.path)
            for image in set(api.images(filters={"dangling": True}, quiet=True)) - dangling_before:
                with contextlib.suppress(docker.errors.APIError):  # docker build's replaced images
                    api.remove_image(image)
    print(f"medians of {args.runs} ({args.workload}, {'cold' if cold else 'edit'}):")
    for tool, found in runs.items():
        medians = {k: statistics.median(float(r[k]) for r in found) for k in ("total", "start", "engine", "end")}  # type: ignore[arg-type]
        print(f"{tool:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
