"""Parallel stages, whole-stage skips and minimal contexts (behaviour, never timings of
the suite itself: the benchmark lives in benchmarks/)."""

from __future__ import annotations

import io
import itertools
import tarfile
import threading
import time

import pytest
from engine_helpers import Builder

from invoke_compimg.building import context as context_module
from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.engine import classic as engine_classic
from invoke_compimg.engine import images
from invoke_compimg.engine.client import Engine
from invoke_compimg.errors import EngineError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("classic_only")]


class Spy:
    """Wraps the real engine calls (no mock: the engine still does every build) to see
    what was sent and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds: list[tuple[str, float, float]] = []  # (first line, start, end)
        self.archives: list[list[str]] = []
        self._lock = threading.Lock()
        real_build, real_archive = engine_classic.build, context_module.archive

        def build(engine, archive, **kwargs):  # type: ignore[no-untyped-def]
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                text = tar.extractfile(context_module.DOCKERFILE_IN_CONTEXT).read().decode()  # type: ignore[union-attr]
            started = time.monotonic()
            try:
                return real_build(engine, archive, **kwargs)
            finally:
                with self._lock:
                    self.builds.append((text, started, time.monotonic()))

        def context_archive(context, text, paths, **kwargs):  # type: ignore[no-untyped-def]
            archive = real_archive(context, text, paths, **kwargs)
            with tarfile.open(fileobj=archive) as tar:
                self.archives.append(tar.getnames())
            archive.seek(0)
            return archive

        monkeypatch.setattr(engine_classic, "build", build)
        monkeypatch.setattr(context_module, "archive", context_archive)

    def stages_sent(self) -> list[str]:
        return [text for text, _, _ in self.builds]


def _builder(project: Project, **settings) -> Builder:  # type: ignore[no-untyped-def]
    return Builder(project, Settings(**settings), out=io.StringIO())


FAN_OUT = "".join(f"NAME s{i}\nFROM busybox\nRUN sleep 1 && echo {i} > /r{i}\n" for i in range(3)) + \
    "NAME final\nFROM busybox\nCOPY s0:/r0 s1:/r1 s2:/r2 /all/\n"


def test_independent_stages_overlap_in_time(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spy = Spy(monkeypatch)
    project = make_project(FAN_OUT)
    _builder(project, jobs=4, no_cache=True).build()
    first = sorted(spy.builds, key=lambda b: b[1])[:3]
    assert all("RUN sleep 1" in text for text, _, _ in first)
    latest_start = max(start for _, start, _ in first)
    earliest_end = min(end for _, _, end in first)
    assert latest_start < earliest_end, "the three sleeping stages ran one after another"
    final_start = max(spy.builds, key=lambda b: b[1])[1]
    assert final_start >= max(end for _, _, end in first), "final started before its inputs"


def test_jobs_one_is_serial(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spy = Spy(monkeypatch)
    _builder(make_project(FAN_OUT), jobs=1, no_cache=True).build()
    spans = sorted((start, end) for _, start, end in spy.builds)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_failure_stops_scheduling_and_reports_every_failure(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spy = Spy(monkeypatch)
    project = make_project("NAME a\nFROM busybox\nRUN exit 3\nNAME b\nFROM busybox\nRUN exit 4\n"
                           "NAME c\nFROM busybox\nRUN sleep 1\nNAME d\nFROM busybox\nCOPY a:/ b:/ c:/ /x/\n")
    builder = _builder(project, jobs=3)
    with pytest.raises(EngineError) as caught:
        builder.build()
    assert "stage 'a' failed" in str(caught.value) or "stage 'b' failed" in str(caught.value)
    assert "also failed: " in builder.out.getvalue()  # type: ignore[attr-defined]
    assert not any("COPY" in text for text in spy.stages_sent()), "d was started after a failure"


def test_unchanged_stage_is_not_sent_again_and_changed_file_is(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME build\nFROM busybox\nCOPY src/ /src/\nRUN cat /src/a > /out\n"
                           "NAME run\nFROM busybox\nCOPY build:/out /out\n",
                           {"src/a": "one\n", "unrelated.txt": "x\n"})
    _builder(project).build()
    spy = Spy(monkeypatch)
    fresh = Project(project.dockerfile, project.context)  # a new process: no in-memory state
    warm = _builder(fresh)
    warm.build()
    assert spy.builds == [] and all(r.outcome in ('reused', 'memo') for r in warm.results)
    (project.context / "unrelated.txt").write_text("changed, but no stage reads it\n")
    _builder(Project(project.dockerfile, project.context)).build()
    assert spy.builds == []
    (project.context / "src/a").write_text("two\n")
    ids = _builder(Project(project.dockerfile, project.context)).build()
    assert len(spy.builds) == 2  # build (its input changed) and run (its base stage changed)
    from engine_helpers import run_image

    assert run_image(project_api(), ids["run"], ["cat", "/out"])[1] == "two\n"
    spy.builds.clear()
    _builder(Project(project.dockerfile, project.context), no_cache=True).build()
    assert len(spy.builds) == 2  # --no-cache sends everything again
    spy.builds.clear()
    _builder(Project(project.dockerfile, project.context)).build()
    assert spy.builds == []  # ... and records what it built, so the next build reuses it


def project_api():  # type: ignore[no-untyped-def]
    return Engine().api


def test_build_args_are_inputs(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = make_project("FROM busybox\nARG V=1\nRUN echo $V > /v\n")
    _builder(project, build_args={"V": "1"}).build()
    spy = Spy(monkeypatch)
    _builder(Project(project.dockerfile, project.context), build_args={"V": "1"}).build()
    assert spy.builds == []
    _builder(Project(project.dockerfile, project.context), build_args={"V": "2"}).build()
    assert len(spy.builds) == 1


def test_unread_context_file_is_not_sent(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spy = Spy(monkeypatch)
    project = make_project(
        "NAME build\nFROM busybox\nCOPY src/*.c inc /in/\nRUN ls -R /in > /listing\n"
        "NAME run\nFROM busybox\nCOPY build:/listing /listing\n",
        {"src/a.c": "a", "src/b.h": "b", "inc/x.h": "x", "big.bin": b"\0" * (8 << 20),
         "ignored.c": "i", ".dockerignore": "ignored.c\n"},
    )
    ids = _builder(project, no_cache=True).build()
    build_archive, run_archive = spy.archives
    assert "big.bin" not in build_archive and "src/b.h" not in build_archive
    assert {"src/a.c", "inc/x.h"} <= set(build_archive)
    assert set(run_archive) == {context_module.DOCKERFILE_IN_CONTEXT, ".dockerignore"}
    from engine_helpers import run_image

    listing = run_image(project_api(), ids["run"], ["cat", "/listing"])[1]
    assert "a.c" in listing and "x.h" in listing and "b.h" not in listing


def test_superseded_images_do_not_pile_up(make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project("FROM busybox\nCOPY f /f\n", {"f": "0"})
    built = []
    for n in range(4):
        (project.context / "f").write_text(str(n))
        built.append(_builder(Project(project.dockerfile, project.context)).build()["stage-0"])
    records = [t for i in api.images(name=project.repository) for t in i["RepoTags"] if "--I-" in t]
    assert len(records) == 1
    assert [images.inspect(Engine(), image_id) is not None for image_id in built] == [False, False, False, True]


def test_an_unchanged_build_imports_neither_the_sdk_nor_grpc(make_project) -> None:  # type: ignore[no-untyped-def]
    """The warm no-op asks the engine a few questions over its unix socket with the standard
    library: the Docker SDK (requests, urllib3) and grpc would cost it 0.1-0.3 s to import."""
    import subprocess
    import sys

    project = make_project("NAME build\nFROM busybox\nCOPY f /f\nNAME run\nFROM busybox\nCOPY build:/f /f\n",
                           {"f": "x"})
    code = ("import sys; sys.argv = ['compimg', 'build', '--progress', 'quiet']\n"
            "from invoke_compimg.tasks.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('docker', 'requests', 'urllib3', 'grpc', 'paramiko', 'rich') "
            "if m in sys.modules))\n")
    first = subprocess.run([sys.executable, "-c", code], cwd=project.context, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-c", code], cwd=project.context, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "[]", second.stdout


def test_a_build_with_a_session_imports_only_what_it_uses(make_project) -> None:  # type: ignore[no-untyped-def]
    """Each module imported before the solve is start-up time that `docker build` does not
    have: a BuildKit build with a session sends no tar (tarfile, the HTTP solve), receives no
    files (diffcopy_receive), talks to the engine without the SDK, and (with no secret, ssh or
    registry login used) without protobuf's runtime."""
    import os
    import subprocess
    import sys

    project = make_project("NAME build\nFROM busybox\nCOPY f /f\n", {"f": "x"})
    code = ("import sys; sys.argv = ['compimg', 'build', '--no-cache', '--progress', 'quiet']\n"
            "from invoke_compimg.tasks.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('docker', 'requests', 'grpc', 'tarfile', 'uuid', 'google.protobuf', "
            "'invoke_compimg.engine.buildkit.http_solve', 'invoke_compimg.engine.control.diffcopy_receive') "
            "if m in sys.modules))\n")
    env = {**os.environ, "INVOKE_COMPIMG_BUILDER": "buildkit"}
    result = subprocess.run([sys.executable, "-c", code], cwd=project.context, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
