"""The output layer: plain lines for logs, quiet for scripts, and the live view on a real terminal."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from invoke_compimg.errors import UserError
from invoke_compimg.progress import LiveReporter, PlainReporter, QuietReporter, StageResult, format_table, make_reporter

ROOT = Path(__file__).resolve().parent.parent
BUILD_ID = "sha256:" + "0123456789ab" + "c" * 52
RUN_ID = "sha256:" + "fedcba987654" + "d" * 52


class TearingStream(io.StringIO):
    """Writes character by character, yielding the GIL in between: unlocked writers would tear."""

    def write(self, text: str) -> int:
        for char in text:
            super().write(char)
            time.sleep(0)
        return len(text)


def take_turns(*scripts: list[Callable[[], None]]) -> None:
    """Run each script in its own thread, calls alternating in a fixed order (0, 1, 0, 1, ...)."""
    turn = [0]
    cond = threading.Condition()
    total = sum(len(s) for s in scripts)
    order = [i for k in range(max(len(s) for s in scripts)) for i, s in enumerate(scripts) if k < len(s)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        for call in scripts[index]:
            with cond:
                assert cond.wait_for(lambda: turn[0] < total and order[turn[0]] == index, timeout=10)
            try:
                call()
            except BaseException as exc:
                errors.append(exc)
            with cond:
                turn[0] += 1
                cond.notify_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(scripts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert turn[0] == total


# --- plain ----------------------------------------------------------------------------------

def test_plain_lines_of_two_stages_from_two_threads() -> None:
    out, err = io.StringIO(), io.StringIO()
    r = make_reporter("plain", out, err)
    assert isinstance(r, PlainReporter)
    build = [
        lambda: r.stage_started("build"),
        lambda: r.step_done("build", "[build 1/3] FROM golang:1.19", None, True),
        lambda: r.step("build", "[build 2/3] RUN go build -o /app ."),
        lambda: r.output("build", "hello\n"),
        lambda: r.output("build", "\x1b[32mgreen\x1b[0m 10%\r 55%\r100%"),
        lambda: r.step_done("build", "[build 2/3] RUN go build -o /app .", 1.23, False),
        lambda: r.stage_finished("build", BUILD_ID, 2.1, "built"),
        lambda: r.note("tagged my-app:1.0 (sha256:0123)", "build"),
    ]
    run = [
        lambda: r.stage_started("run"),
        lambda: r.step("run", "Step 1/3 : FROM busybox"),
        lambda: r.output("run", " ---> abcdef\n\n"),
        lambda: r.step("run", "Step 2/3 : COPY app ."),
        lambda: r.step_done("run", "", 0.4, False),
        lambda: r.warning("push skipped"),
        lambda: r.stage_failed("run", "stage 'run' failed at COPY app .:\nno such file"),
    ]
    take_turns(build, run)
    r.note("pulling golang:1.22")
    r.result(RUN_ID)
    r.close()
    assert out.getvalue().splitlines() == [
        "[build] #1 [build 1/3] FROM golang:1.19",
        "[build] #1 CACHED",
        "[run] #2 Step 1/3 : FROM busybox",
        "[build] #3 [build 2/3] RUN go build -o /app .",
        "[run]  ---> abcdef",
        "[build] hello",
        "[run] #4 Step 2/3 : COPY app .",
        "[build] 100%",
        "[run] #4 DONE 0.4s",
        "[build] #3 DONE 1.2s",
        "[build] built 0123456789ab in 2.1s",
        "[run] FAILED",  # the error itself is the line the raised exception prints: once
        "[build] tagged my-app:1.0 (sha256:0123)",
        "pulling golang:1.22",
    ]
    assert err.getvalue() == "warning: push skipped\n"
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert "no such file" not in out.getvalue()


def test_plain_lines_are_never_torn_by_threads() -> None:
    out = TearingStream()
    r = make_reporter("plain", out, io.StringIO())

    def flood(stage: str) -> None:
        r.step(stage, f"[{stage} 1/1] RUN make")
        for i in range(300):
            r.output(stage, f"{stage} line {i}")

    threads = [threading.Thread(target=flood, args=(name,)) for name in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert out.getvalue().endswith("\n")
    for stage in ("alpha", "beta"):
        mine = [line for line in lines if line.startswith(f"[{stage}] ")]
        assert mine[1:] == [f"[{stage}] {stage} line {i}" for i in range(300)]
    assert len(lines) == 602  # nothing else: every line is one of the two stages' whole lines


# --- quiet ----------------------------------------------------------------------------------

def test_quiet_prints_the_image_id_and_only_errors() -> None:
    out, err = io.StringIO(), io.StringIO()
    r = make_reporter("quiet", out, err)
    assert isinstance(r, QuietReporter)
    r.stage_started("build")
    r.step("build", "[build 1/2] RUN echo one")
    r.output("build", "from the first step")
    r.step_done("build", "[build 1/2] RUN echo one", 0.1, False)
    r.step("build", "[build 2/2] RUN make")
    for i in range(1, 16):
        r.output("build", f"make line {i}")
    r.note("pulling golang:1.22")
    r.stage_finished("other", RUN_ID, 0.1, "cached")
    r.table([StageResult("build", BUILD_ID, 10, 1.0, "built", "buildkit")], None)
    r.stage_failed("build", "stage 'build' failed at RUN make: exit code 2")
    r.result(RUN_ID)
    r.close()
    assert out.getvalue() == RUN_ID + "\n"
    assert err.getvalue().splitlines() == [
        *(f"[build] make line {i}" for i in range(6, 16)),
    ]


def test_warnings_go_to_stderr_in_every_mode() -> None:
    for mode in ("plain", "quiet"):
        out, err = io.StringIO(), io.StringIO()
        r = make_reporter(mode, out, err)
        r.warning("the engine is old")
        r.close()
        assert (out.getvalue(), err.getvalue()) == ("", "warning: the engine is old\n")


# --- the table ------------------------------------------------------------------------------

ROWS = [
    StageResult("build", BUILD_ID, 462_000_000, 12.345, "built", "buildkit"),
    StageResult("assets", "sha256:" + "a" * 64, -1, 0.0, "reused", "classic"),
    StageResult("run", RUN_ID, 3_810_000, 0.3, "cached", "buildkit"),
]


def test_table_for_the_final_target_compares_sizes() -> None:
    assert format_table(ROWS, "run") == textwrap.dedent("""\
        stage   image         size      seconds        builder
        build   0123456789ab  462.0 MB  12.35          buildkit
        assets  aaaaaaaaaaaa  -         0.00 (reused)  classic
        run     fedcba987654  3.8 MB    0.30 (cached)  buildkit
        final image 'run': 3.8 MB; largest build stage 'build': 462.0 MB (121x larger)
        """)


def test_table_for_an_intermediate_target_has_no_ratio_line() -> None:
    text = format_table(ROWS[:1], None)
    assert text == ("stage  image         size      seconds  builder\n"
                    "build  0123456789ab  462.0 MB  12.35    buildkit\n")
    assert "final image" not in format_table(ROWS[1:], None)
    assert "final image" not in format_table(ROWS[2:], "run")  # nothing to compare with


def test_table_says_what_a_stage_built_inside_a_solve_is() -> None:
    """No image of its own: where it was built, and its base image's size as what it has at
    least; the comparison keeps it, says so, and says how to see its own size."""
    rows = [StageResult("build", "", 459_900_000, 0.6, "built", "buildkit", inside="run", at_least=True),
            StageResult("run", RUN_ID, 3_810_000, 1.3, "built", "buildkit")]
    assert format_table(rows, "run") == textwrap.dedent("""\
        stage  image                  size         seconds  builder
        build  none (in run's solve)  >= 459.9 MB  0.60     buildkit
        run    fedcba987654           3.8 MB       1.30     buildkit
        final image 'run': 3.8 MB; largest build stage 'build': at least 459.9 MB, its base image (at least 121x \
larger); for its own size give it an image: --tag build=REF
        """)
    # Unknown (a scratch base): no size, and nothing to compare with; never a question mark.
    rows[0] = StageResult("build", "", -1, 0.6, "shared", "buildkit", inside="run")
    text = format_table(rows, "run")
    assert "?" not in text and "final image" not in text
    assert text.splitlines()[1].split() == ["build", "none", "(in", "run's", "solve)", "-", "0.60", "(shared)",
                                            "buildkit"]
    # An exact size larger than a lower bound is the largest; sizes close to the final's are said as such.
    rows = [StageResult("build", "", 3_000_000, 0.6, "built", "buildkit", inside="run", at_least=True),
            StageResult("tools", BUILD_ID, 3_900_000, 0.1, "built", "buildkit"),
            StageResult("run", RUN_ID, 3_810_000, 1.3, "built", "buildkit")]
    assert format_table(rows, "run").splitlines()[-1] == (
        "final image 'run': 3.8 MB; largest build stage 'tools': 3.9 MB (about the same size)")
    rows[1] = StageResult("tools", BUILD_ID, 6_000_000, 0.1, "built", "buildkit")
    assert format_table(rows, "run").endswith("'tools': 6.0 MB (57% larger)\n")


def test_table_is_printed_by_plain_not_quiet() -> None:
    out = io.StringIO()
    make_reporter("plain", out, io.StringIO()).table(ROWS, "run")
    assert out.getvalue() == format_table(ROWS, "run")
    out = io.StringIO()
    make_reporter("quiet", out, io.StringIO()).table(ROWS, "run")
    assert out.getvalue() == ""


# --- choosing a mode ------------------------------------------------------------------------

def test_unknown_mode_is_a_one_line_error() -> None:
    with pytest.raises(UserError) as caught:
        make_reporter("bogus", io.StringIO(), io.StringIO())
    assert str(caught.value) == "--progress bogus: choose one of auto, plain, tty, quiet"


def test_auto_is_plain_off_a_terminal_and_live_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_reporter("auto", io.StringIO(), io.StringIO()), PlainReporter)
    pytest.importorskip("rich", reason="rich is not installed (the project should depend on it)")
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        try:
            monkeypatch.setenv("TERM", "xterm")
            live = make_reporter("auto", terminal, terminal)
            assert isinstance(live, LiveReporter)
            live.close()
            monkeypatch.setenv("TERM", "dumb")
            assert isinstance(make_reporter("auto", terminal, terminal), PlainReporter)
        finally:
            os.close(master)
    forced = make_reporter("tty", io.StringIO(), io.StringIO())  # tty: even when not a terminal
    assert isinstance(forced, LiveReporter)
    forced.close()


def test_importing_and_plain_output_do_not_load_rich() -> None:
    code = ("import sys; from invoke_compimg.progress import make_reporter; "
            "r = make_reporter('plain'); r.step('s', 'x'); r.close(); "
            "print('rich loaded' if any(m.split('.')[0] == 'rich' for m in sys.modules) else 'no rich')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.splitlines()[-1] == "no rich", done.stderr


def test_forced_live_view_off_a_terminal() -> None:
    pytest.importorskip("rich", reason="rich is not installed (the project should depend on it)")
    out, err = io.StringIO(), io.StringIO()
    r = make_reporter("tty", out, err)
    r.stage_started("build")
    r.step("build", "[build 1/1] RUN make")
    r.warning("stderr is not the terminal")  # so it goes there, not through the view
    r.stage_finished("build", BUILD_ID, 1.0, "built")
    r.result(BUILD_ID)
    r.close()
    r.close()  # twice is fine
    text = ESCAPE.sub("", out.getvalue())
    assert "\x1b[?25l" in out.getvalue() and out.getvalue().rstrip("\r\n").endswith("\x1b[?25h")
    assert re.search(r"✔ build\s+1\.0s\s+built 0123456789ab", text)
    assert BUILD_ID not in text  # result() prints nothing in this mode
    assert err.getvalue() == "warning: stderr is not the terminal\n"


# --- the live view on a real pseudo-terminal ------------------------------------------------

CHILD = """
import sys, time
from invoke_compimg.progress import StageResult, make_reporter

r = make_reporter("auto")
BUILD = "sha256:" + "0123456789ab" + "c" * 52

def scripted():
    r.stage_started("build")
    r.step_done("build", "[build 1/3] FROM golang:1.19", None, True)
    r.step("build", "[build 2/3] RUN go build -o /app .")
    r.output("build", "compiling main.go")
    r.stage_started("test")
    r.step("test", "[test 2/2] RUN go test ./...")
    for i in range(1, 13):
        r.output("test", f"test line {i}")
    time.sleep(0.8)
    r.step_done("build", "[build 2/3] RUN go build -o /app .", 0.8, False)
    r.stage_finished("build", BUILD, 2.1, "built")
    time.sleep(0.5)
    r.stage_failed("test", "stage 'test' failed at RUN go test ./...: exit code 1")
    r.note("tagged my-app:1.0 (sha256:0123456789ab)")
    r.table([StageResult("build", BUILD, 462_000_000, 2.1, "built", "buildkit")], None)

def forever():
    r.stage_started("run")  # its first step done, it waits for build's
    r.step("run", "[run 1/2] FROM busybox")
    r.step_done("run", "[run 1/2] FROM busybox", 0.0, True)
    r.stage_started("build")
    r.step("build", "[build 2/3] RUN go build -o /app .")
    while True:
        r.output("build", "still compiling")
        time.sleep(0.1)

script = {"scripted": scripted, "forever": forever}[sys.argv[1]]
if sys.argv[2] == "finally":
    try:
        script()
    finally:
        r.close()
else:
    script()  # no close(): the reporter's exit hook restores the terminal
"""

ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def run_on_pty(tmp_path: Path, *args: str, interrupt_after: str | None = None) -> tuple[str, int]:
    """Runs CHILD on a new 100x30 pseudo-terminal (its controlling terminal); returns its output
    and wait status. With `interrupt_after`, types Ctrl-C once that text has appeared."""
    import fcntl
    import pty
    import struct
    import termios

    driver = tmp_path / "driver.py"
    driver.write_text(CHILD)
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    pid, master = pty.fork()
    if pid == 0:  # the child: size the terminal, then become the driver
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, str(driver), *args], env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 60
    typed = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child is gone and the terminal closed
                    break
                if not chunk:
                    break
                output += chunk
            if interrupt_after and not typed and interrupt_after.encode() in output:
                time.sleep(0.5)  # let the view draw a few frames
                os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the child
                typed = True
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the child did not finish: {output[-2000:]!r}")
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    return output.decode("utf-8", "replace"), status


def after_last_hide(raw: str) -> str:
    """The output after the view last hid the cursor."""
    assert "\x1b[?25l" in raw, raw
    return raw.rsplit("\x1b[?25l", 1)[1]


live_only = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


@live_only
def test_live_view_on_a_terminal(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="rich is not installed (the project should depend on it)")
    raw, status = run_on_pty(tmp_path, "scripted", "finally")
    text = ESCAPE.sub("", raw)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Traceback" not in text, text  # e.g. from rich's refresh thread
    # Running stages: one line each, with the current step and the elapsed time.
    assert re.search(r"build\s+\[build 2/3\] RUN go build -o /app \.\s+\d+\.\ds", text), text
    assert re.search(r"test\s+\[test 2/2\] RUN go test \./\.\.\.\s+\d+\.\ds", text), text
    assert "test line 12" in text  # the running step's last output lines, under it
    # A finished stage collapses to one line, printed once (it is not part of the redrawn view).
    assert len(re.findall(r"✔ build\s+2\.1s\s+built 0123456789ab", text)) == 1, text
    # The failed stage's last output lines stay above its error; the view does not swallow them.
    failure = text[text.index("✘ test"):]
    shown = re.findall(r"^\s+test line (\d+)\s*$", failure, re.M)
    assert shown == [str(i) for i in range(3, 13)], failure
    # The error itself is the line the raised exception prints after the view: not here too.
    assert "exit code 1" not in text and "ERROR" not in text, failure
    assert "tagged my-app:1.0 (sha256:0123456789ab)" in text
    assert "final image" not in text and re.search(r"build\s+0123456789ab\s+462\.0 MB\s+2\.10\s+buildkit", text)
    # The terminal is restored: the cursor shown again after the view hid it.
    assert "\x1b[?25h" in after_last_hide(raw)


@live_only
@pytest.mark.parametrize("closing", ["finally", "exit-hook"])
def test_ctrl_c_mid_view_restores_the_terminal(tmp_path: Path, closing: str) -> None:
    pytest.importorskip("rich", reason="rich is not installed (the project should depend on it)")
    raw, status = run_on_pty(tmp_path, "forever", closing, interrupt_after="still compiling")
    # Python ends on an unhandled KeyboardInterrupt by dying of SIGINT.
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT, (status, raw[-2000:])
    text = ESCAPE.sub("", raw)
    assert "KeyboardInterrupt" in text
    assert "\x1b[?25h" in after_last_hide(raw)
    if closing == "finally":  # a stage still running when the view closes is listed as stopped
        assert re.search(r"- build\s+\d+\.\ds\s+stopped at \[build 2/3\] RUN go build", text), text
        # ... where it was: a stage waiting after a finished step did not stop "at" that step
        assert re.search(r"- run\s+\d+\.\ds\s+stopped after \[run 1/2\] FROM busybox", text), text
