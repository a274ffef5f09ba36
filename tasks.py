"""The project's own development tasks, written the way we ask users to write theirs."""

from __future__ import annotations

import sys

from invoke import Collection, Context, task

import invoke_compimg

compimg = invoke_compimg.collection("examples/hello-go/Dockerfile", "examples/hello-go")


@task(pre=[compimg["build"]])
def demo(c: Context) -> None:
    """Build examples/hello-go, run its final image, and compare the two images' sizes."""
    import docker

    client = docker.from_env()
    tags = c.config.compimg.tags
    output = client.containers.run(tags["run"], remove=True, network_disabled=True)
    print(f"$ docker run --rm {tags['run']}\n{output.decode().rstrip()}")
    build, run = (client.images.get(tags[s]).attrs["Size"] for s in ("build", "run"))
    print(f"build stage image {tags['build']}: {build / 1e6:.1f} MB")
    print(f"final image       {tags['run']}: {run / 1e6:.1f} MB ({build / run:.0f}x smaller)")


@task(help={"args": "extra pytest arguments, e.g. '-k parse -x'"})
def test(c: Context, args: str = "") -> None:
    """Run the whole test suite (unit tests and engine tests)."""
    c.run(f"{sys.executable} -m pytest {args}", pty=False)


@task(help={"args": "extra pytest arguments, e.g. '-k replayed'"})
def coverage(c: Context, args: str = "") -> None:
    """The engine-free suite (the fast layer, on recorded engine answers) with coverage, per module.

    DOCKER_HOST names no engine, so a test that reaches for a real one fails instead of
    counting. Re-record the answers with `python tests/record_engine.py` (needs the engine)."""
    import importlib.util
    import os

    if not importlib.util.find_spec("pytest_cov"):
        c.run(f"{sys.executable} -m pip install -q --disable-pip-version-check -e '.[test]'")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    c.run(f"{sys.executable} -m pytest -q -p no:cacheprovider -m 'not engine' --cov=invoke_compimg "
          f"--cov-report=term {args}", env=env, pty=False)


@task
def lint(c: Context) -> None:
    """ruff and mypy over the package and tests (installs the dev extra when missing)."""
    import importlib.util

    if not (importlib.util.find_spec("ruff") and importlib.util.find_spec("mypy")):
        c.run(f"{sys.executable} -m pip install -q --disable-pip-version-check -e '.[dev]'")
    c.run(f"{sys.executable} -m ruff check invoke_compimg tests tasks.py benchmarks")
    c.run(f"{sys.executable} -m mypy invoke_compimg")


@task(help={"runs": "interleaved runs per tool and mode (median taken)",
            "only": "comma-separated workloads, e.g. 'hello,chain'"})
def bench(c: Context, runs: int = 3, only: str = "") -> None:
    """Time compimg against `docker build` (classic and BuildKit) on the same engine."""
    c.run(f"{sys.executable} benchmarks/bench.py --runs {runs}" + (f" --only '{only}'" if only else ""))


@task
def protos(c: Context) -> None:
    """Regenerate invoke_compimg/engine/control/proto/*_pb2.py(i) from our .proto files (grpcio-tools)."""
    import glob

    files = " ".join(sorted(glob.glob("invoke_compimg/engine/control/proto/*.proto")))
    c.run(f"{sys.executable} -m grpc_tools.protoc -I . --python_out=. --pyi_out=. {files}")


ns = Collection(demo, test, coverage, lint, bench, protos)
ns.add_collection(compimg)
ns.configure({"compimg": {"tags": {"build": "hello-go-build", "run": "hello-go"}}})
