"""What a build shows, end to end on the engine: a failure once, under the stage that failed;
the stages BuildKit builds inside the target's solve in the table and the size comparison
(no question marks); the live view finishing them when they finish; and a build that waits
for another build of the same folder saying so."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import COMPIMG, cli

pytestmark = pytest.mark.engine

ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")

FAILS_IN_BUILD = """\
NAME build
FROM busybox
RUN echo out-{unique} && exit 3

NAME run
FROM busybox
COPY build:/x /x
"""


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_a_failure_is_reported_once_under_the_stage_that_failed(builder: str, make_project: Any,
                                                                unique: str) -> None:
    project = make_project(FAILS_IN_BUILD.format(unique=unique))
    result = cli("compimg", ["build", "--progress", "plain", "--builder", builder], project.context)
    assert result.returncode == 1
    error = result.stderr.strip()
    assert error.splitlines() == [error] and error.startswith(f"{project.dockerfile}:3: stage 'build' failed at RUN")
    out = result.stdout
    assert out.index(f"[build] out-{unique}") < out.index("[build] FAILED"), out
    assert "[run] FAILED" not in out and "ERROR" not in out and "exit code" not in out, out  # said once: stderr
    quiet = cli("compimg", ["build", "--progress", "quiet", "--builder", builder], project.context)
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr.splitlines() == [f"[build] out-{unique}", error]


TWO_STAGES = """\
NAME build
FROM busybox
RUN echo {unique} > /x

NAME run
FROM busybox
COPY build:/x /x
"""


def table(out: str) -> dict[str, str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage  image"))
    return {line.split()[0]: line for line in lines[start + 1:] if line.split()[0] in ("build", "run")}


def test_the_table_says_what_a_stage_built_inside_the_solve_is(make_project: Any, api: Any, unique: str) -> None:
    project = make_project(TWO_STAGES.format(unique=unique))
    result = cli("compimg", ["build", "--progress", "plain", "--builder", "buildkit"], project.context)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    busybox = api.inspect_image("busybox")["Size"] / 1e6
    assert re.fullmatch(rf"build\s+none \(in run's solve\)\s+>= {busybox:.1f} MB\s+\d+\.\d\d\s+buildkit",
                        rows["build"]), result.stdout
    assert "?" not in rows["build"] and "?" not in rows["run"]
    run = api.inspect_image(project.local_ref("run"))["Size"] / 1e6
    assert result.stdout.splitlines()[-1] == (
        f"final image 'run': {run:.1f} MB; largest build stage 'build': at least {busybox:.1f} MB, its base image; "
        "for its own size give it an image: --tag build=REF")
    # Given an image (as the line says), the stage has its own size, and the line compares it.
    tagged = cli("compimg", ["build", "--progress", "plain", "--builder", "buildkit", "-t", f"build={unique}:b"],
                 project.context)
    assert tagged.returncode == 0, tagged.stderr
    own = api.inspect_image(f"{unique}:b")
    assert re.match(rf"build\s+{own['Id'][7:19]}\s+{own['Size'] / 1e6:.1f} MB\s", table(tagged.stdout)["build"])
    assert f"largest build stage 'build': {own['Size'] / 1e6:.1f} MB (" in tagged.stdout.splitlines()[-1]


def on_pty(args: list[str], cwd: Path, seconds: float = 240) -> str:
    """`compimg ARGS` on a new 100x30 pseudo-terminal; what it printed, escape codes removed."""
    import fcntl
    import pty
    import struct
    import termios

    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    pid, master = pty.fork()
    if pid == 0:
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.chdir(cwd)
            os.execve(COMPIMG[0], [*COMPIMG, *args], env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child is gone
                    break
                if not chunk:
                    break
                output += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(master)
        os.waitpid(pid, 0)
    return ESCAPE.sub("", output.decode("utf-8", "replace"))


FINISHES_THEN_FAILS = """\
NAME build
FROM busybox
RUN echo {unique} > /x

NAME run
FROM busybox
COPY build:/x /x
RUN sleep 2 && exit 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_the_live_view_finishes_a_stage_when_it_finishes(make_project: Any, unique: str) -> None:
    project = make_project(FINISHES_THEN_FAILS.format(unique=unique))
    text = on_pty(["build", "--progress", "tty", "--builder", "buildkit"], project.context)
    # build is done while run still runs: shown done then, not spinning until the solve ends,
    # and not listed as stopped when run fails.
    assert re.search(r"✔ build\s+\d+\.\ds\s+built", text), text
    assert text.index("✔ build") < text.index("✘ run"), text
    assert not re.search(r"- build .*stopped", text), text
    spinning = [line for line in text[text.index("✔ build"):].splitlines() if re.match(r"\S build\s+\[build", line)]
    assert spinning == [], spinning
    # the failure once: the view's line for it, then the error
    assert len(re.findall(r"failed at RUN sleep 2", text)) == 1, text


SLOW = """\
NAME build
FROM busybox
COPY a.txt /a.txt
RUN echo started-{unique} && sleep 8 && echo made > /made

NAME run
FROM busybox
COPY build:/made /made
"""


def test_a_build_waiting_for_another_build_of_the_folder_says_so_once(make_project: Any, unique: str) -> None:
    project = make_project(SLOW.format(unique=unique), {"a.txt": unique})
    first = subprocess.Popen([*COMPIMG, "build", "--progress", "plain", "--builder", "buildkit"],
                             cwd=project.context, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        assert first.stdout is not None
        seen = ""
        while f"[build] started-{unique}" not in seen:  # its long step runs
            line = first.stdout.readline()
            assert line, seen + first.communicate()[1]
            seen += line
        started = time.monotonic()
        second = cli("compimg", ["build", "--progress", "plain", "--builder", "buildkit"], project.context)
        waited = time.monotonic() - started
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert waited > 4, second.stdout  # it did wait for the other build's step
    notes = [line for line in second.stdout.splitlines() if "waiting" in line]
    assert len(notes) == 1, second.stdout
    # (the first step not started here: the COPY, or the RUN when the COPY came from the cache)
    assert re.fullmatch(r"\[build\] waiting for another build on this engine: it runs the same steps \(from "
                        r"\[build (2/3\] COPY a\.txt /a\.txt|3/3\] RUN echo started-\S+ && sleep 8 .*) on\), "
                        r"which BuildKit runs once for both and shows only there", notes[0]), notes
    assert "[build] built by another build in" in second.stdout
    assert "(shared)" in table(second.stdout)["build"]
    assert "waiting" not in seen + out  # the build that ran the steps did not wait
