"""compimg (both builders) against `docker build` (classic and BuildKit) on the same engine.

    python benchmarks/bench.py [--runs N] [--only hello,fan-out] [--markdown FILE]

Eight workloads. compimg builds the seed-syntax file as a whole `compimg` process, as users
run it, once per builder (`--builder buildkit`, `--builder classic`); the peers build the
native equivalent: `DOCKER_BUILDKIT=0 docker build` and `DOCKER_BUILDKIT=1 docker build
--network=none` (Debian's 20.10 client when present; newer clients need buildx). The
"seed interface" workload is hello with both stages tagged (`--tag=build=... --tag=run=...`):
one compimg process, where docker needs two builds (`--target build -t ...`, then `-t ...`).
"output" is the Go example with a `FROM scratch` artifact stage, written with
`-o type=local,dest=out` by both BuildKit tools (the classic builder writes no files).
"editloop" is a 2,000-file, 200 MB source tree read whole by one `COPY`; before each build one
file is edited ("edit" rows, instead of cold). Runs are interleaved, in orders where each tool
runs right after each other one equally often over the rounds (`balanced_orders`: 10 rounds
for 5 tools, 6 for 3), cold (`--no-cache`) then warm (the same build again, nothing changed), together with
`invoke --version` as a whole process (the floor of any Invoke-based command); the table gives
medians and ratios. A script, never a timed assertion in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"
COMPIMG = [sys.executable, "-c", "from invoke_compimg.tasks.cli import run; run()"]


def _hello(folder: Path) -> tuple[str, str]:
    for name in ("main.go", "go.mod"):
        shutil.copy(ROOT / "examples/hello-go" / name, folder / name)
    seed = (ROOT / "examples/hello-go/Dockerfile").read_text()
    native = ("FROM golang:1.19 AS build\nCOPY . .\nRUN go build -o /go/bin/app .\n\n"
              "FROM busybox AS run\nWORKDIR /app\nCOPY --from=build /go/bin/app .\nCMD [\"./app\"]\n")
    (folder / ".dockerignore").write_text("*.Dockerfile\n")
    return seed, native


def _fan_out(folder: Path) -> tuple[str, str]:
    seed = "".join(f"NAME s{i}\nFROM busybox\nRUN sleep 2 && echo {i} > /out{i}\n\n" for i in range(4))
    seed += "NAME final\nFROM busybox\nCOPY " + " ".join(f"s{i}:/out{i}" for i in range(4)) + " /all/\n"
    native = "".join(f"FROM busybox AS s{i}\nRUN sleep 2 && echo {i} > /out{i}\n\n" for i in range(4))
    native += "FROM busybox AS final\n" + "".join(f"COPY --from=s{i} /out{i} /all/\n" for i in range(4))
    return seed, native


def _chain(folder: Path) -> tuple[str, str]:
    seed = "NAME c0\nFROM busybox\nRUN mkdir /out && echo 0 > /out/0\n"
    native = "FROM busybox AS c0\nRUN mkdir /out && echo 0 > /out/0\n"
    for i in range(1, 20):
        seed += f"NAME c{i}\nFROM busybox\nCOPY c{i - 1}:/out /out\nRUN echo {i} > /out/{i}\n"
        native += f"FROM busybox AS c{i}\nCOPY --from=c{i - 1} /out /out\nRUN echo {i} > /out/{i}\n"
    return seed, native


def _big_context(folder: Path) -> tuple[str, str]:
    with open(folder / "big.bin", "wb") as handle:
        handle.write(os.urandom(1 << 20) * 200)
    seed = "NAME build\nFROM busybox\nRUN echo made > /x\nNAME run\nFROM busybox\nCOPY build:/x /x\n"
    native = "FROM busybox AS build\nRUN echo made > /x\nFROM busybox AS run\nCOPY --from=build /x /x\n"
    return seed, native


def _big_artifact(folder: Path) -> tuple[str, str]:
    make = "RUN dd if=/dev/urandom of=/big bs=1M count=200 2>/dev/null\n"
    seed = f"NAME build\nFROM busybox\n{make}NAME run\nFROM busybox\nCOPY build:/big /big\n"
    native = f"FROM busybox AS build\n{make}FROM busybox AS run\nCOPY --from=build /big /big\n"
    return seed, native


def _output(folder: Path) -> tuple[str, str]:
    for name in ("main.go", "go.mod"):
        shutil.copy(ROOT / "examples/hello-go" / name, folder / name)
    seed = ("NAME build\nFROM golang:1.19\nCOPY main.go go.mod ./\nRUN go build -o /out/app .\n\n"
            "NAME artifact\nFROM scratch\nCOPY build:/out/app /app\n")
    native = ("FROM golang:1.19 AS build\nCOPY main.go go.mod ./\nRUN go build -o /out/app .\n\n"
              "FROM scratch AS artifact\nCOPY --from=build /out/app /app\n")
    return seed, native


def _editloop(folder: Path) -> tuple[str, str]:
    block = os.urandom(100 << 10)
    for i in range(2000):
        path = folder / "src" / f"d{i // 100}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(block[i % 97:] + block[:i % 97])
    seed = "NAME build\nFROM busybox\nCOPY src /src\nRUN cat /src/d0/f7.bin | wc -c > /size\n"
    native = "FROM busybox AS build\nCOPY src /src\nRUN cat /src/d0/f7.bin | wc -c > /size\n"
    return seed, native


WORKLOADS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "hello": _hello, "fan-out": _fan_out, "chain": _chain,
    "big context": _big_context, "big artifact": _big_artifact, "seed interface": _hello,
    "output": _output, "editloop": _editloop,
}
NO_CLASSIC = {"output"}  # the classic builder writes no files: those columns stay empty


# As on a user's machine: Python writes its bytecode cache. Some workplaces (this one among
# them) set PYTHONDONTWRITEBYTECODE=1, and every run then compiles our modules again (about
# 0.05-0.15 s a process here), which no user pays.
USER_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed(command: list[str], folder: Path, env: dict[str, str]) -> float:
    # The previous run's writes (200 MB layers) go to disk first, not into the next run's time:
    # whichever tool came after a big build paid for it, and which one that was is the order of
    # the interleaving, not the tool.
    os.sync()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env={**USER_ENVIRONMENT, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed in {folder}:\n{result.stderr[-2000:]}")
    return elapsed


class _Editor:
    """Edits one file of the editloop's tree before each build: a new content every time."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "src" / "d0" / "f7.bin"
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        data = bytearray(self.path.read_bytes())
        data[:16] = f"edit {self.count:011d}".encode()
        self.path.write_bytes(bytes(data))


def _tools(folder: Path, tag: str, workload: str) -> dict[str, Callable[[bool], float]]:
    both = workload == "seed interface"  # both stages tagged: the seed's own interface
    # each tool writes its own folder, as it keeps its own images: neither rewrites the other's
    def output(tool: str) -> list[str]:
        return ["-o", f"type=local,dest=out-{tool}"] if workload == "output" else []
    edit = _Editor(folder) if workload == "editloop" else None

    def timed(command: list[str], env: dict[str, str], cold: bool) -> float:
        if edit is not None and cold:  # the editloop's "cold" is one edited file, cache kept
            edit()
            command = [c for c in command if c != "--no-cache"]
        return _timed(command, folder, env)

    def compimg(builder: str) -> Callable[[bool], float]:
        tags = [f"--tag=build={tag}-{builder}-build", f"--tag=run={tag}-{builder}"] if both else []
        return lambda cold: timed([*COMPIMG, "-f", "seed.Dockerfile", "build", "--builder", builder,
                                   "--progress", "plain", *tags, *output("compimg"),
                                   *(["--no-cache"] if cold else [])], {}, cold)

    def docker(buildkit: bool) -> Callable[[bool], float]:
        extra = ["--network=none"] if buildkit else []
        name = f"{tag}-{'bk' if buildkit else 'classic'}"
        env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}

        def run(cold: bool) -> float:
            common = [DOCKER, "build", "-q", *extra, *(["--no-cache"] if cold else []), "-f", "native.Dockerfile"]
            seconds = timed([*common, *(output("docker") or ["-t", name]), "."], env, cold)
            if both:
                seconds += _timed([*common, "--target", "build", "-t", f"{name}-build", "."], folder, env)
            return seconds

        return run

    tools = {"compimg buildkit": compimg("buildkit"), "compimg classic": compimg("classic"),
             "classic": docker(False), "BuildKit": docker(True),
             "invoke --version": lambda cold: _timed([sys.executable, "-m", "invoke", "--version"], folder, {})}
    if workload in NO_CLASSIC:
        del tools["compimg classic"], tools["classic"]
    return tools


def balanced_orders(names: list[str]) -> list[list[str]]:
    """The rounds' orders, so that over them all each tool runs right after each other one
    equally often (a Williams design: n orders for n tools when n is even, 2n when odd).

    Which tool runs right after which moves the times: docker's BuildKit editloop build took
    1.37 s right after its classic one and 1.74 s after the others. Starting each round one tool
    later (A B C D, B C D A, ...) does not help: D still follows C in every round but one."""
    n = len(names)
    first = [0]
    for step in range(1, n):  # 0, 1, n-1, 2, n-2, ...
        first.append((step + 1) // 2 if step % 2 else n - step // 2)
    orders = [[names[(i + shift) % n] for i in first] for shift in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def bench(runs: int, only: list[str]) -> list[dict[str, object]]:
    rows = []
    tag = f"compimg-bench-{uuid.uuid4().hex[:8]}"
    for name, make in WORKLOADS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="compimg-bench-") as tmp:
            folder = Path(tmp)
            seed, native = make(folder)
            (folder / "seed.Dockerfile").write_text(seed)
            (folder / "native.Dockerfile").write_text(native)
            tools = _tools(folder, tag, name)
            try:
                for mode in ("cold", "warm"):
                    times: dict[str, list[float]] = {t: [] for t in tools}
                    if mode == "warm":
                        for run in tools.values():
                            run(False)  # bring each tool's own state up to date once
                    orders = balanced_orders(list(tools))
                    for round_ in range(runs):
                        for tool in orders[round_ % len(orders)]:
                            times[tool].append(tools[tool](mode == "cold"))
                    medians = {t: statistics.median(v) for t, v in times.items()}
                    label = "edit" if name == "editloop" and mode == "cold" else mode
                    rows.append({"workload": name, "mode": label, **medians})
                    print(_row(rows[-1]), flush=True)
            finally:
                subprocess.run([*COMPIMG, "-f", "seed.Dockerfile", "clean"], cwd=folder, capture_output=True)
                for suffix in ("bk", "classic", "bk-build", "classic-build", "buildkit", "buildkit-build",
                               "classic-build"):
                    subprocess.run([DOCKER, "rmi", f"{tag}-{suffix}"], capture_output=True)
    return rows


HEADER = ("| workload | mode | compimg BuildKit | compimg classic | docker BuildKit | docker classic "
          "| BuildKit: compimg / docker | classic: compimg / docker | invoke --version |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _row(row: dict[str, object]) -> str:
    def t(name: str) -> str:
        return f"{float(row[name]):.2f} s" if name in row else "—"  # type: ignore[arg-type]

    def ratio(ours: str, theirs: str) -> str:
        if ours not in row or theirs not in row:
            return "—"
        return f"{float(row[ours]) / float(row[theirs]):.2f}x"  # type: ignore[arg-type]

    return (f"| {row['workload']} | {row['mode']} | {t('compimg buildkit')} | {t('compimg classic')} "
            f"| {t('BuildKit')} | {t('classic')} | {ratio('compimg buildkit', 'BuildKit')} "
            f"| {ratio('compimg classic', 'classic')} | {t('invoke --version')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and mode (median taken)")
    parser.add_argument("--only", default="", help="comma-separated workloads")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    server = subprocess.run([DOCKER, "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True)
    heading = (f"{date.today()} on {platform.machine()}, {os.cpu_count()} cores, engine "
               f"{server.stdout.strip()}, {args.runs} interleaved runs each, medians; "
               "ratios are compimg / docker build with the same builder")
    print(heading)
    print(HEADER)
    import docker

    api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
    dangling_before = set(api.images(filters={"dangling": True}, quiet=True))
    try:
        rows = bench(args.runs, [w for w in args.only.split(",") if w])
    finally:  # the peers leave untagged images, as docker build does: remove this run's
        for image in set(api.images(filters={"dangling": True}, quiet=True)) - dangling_before:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(image)
    if args.markdown:
        Path(args.markdown).write_text(heading + "\n\n" + HEADER + "\n" + "\n".join(_row(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
