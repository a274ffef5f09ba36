"""Where a compimg build's time goes: when the first BuildKit solve starts and ends,
measured from process start, in the current folder's project.

    cd some/project && python /path/to/benchmarks/phases.py [compimg build options...]

Prints e.g. {'solve_start': 0.27, 'solve_end': 1.79, 'end': 1.80}: everything before
`solve_start` is start-up (imports, parsing, a few engine requests). A script, run on demand.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

START = time.perf_counter()

from invoke_compimg.engine import buildkit  # noqa: E402

marks: dict[str, float] = {}
real_solve = buildkit.solve


def timed_solve(*args, **kwargs):  # type: ignore[no-untyped-def]
    marks.setdefault("solve_start", time.perf_counter() - START)
    try:
        return real_solve(*args, **kwargs)
    finally:
        marks["solve_end"] = time.perf_counter() - START


buildkit.solve = timed_solve


def main() -> None:
    from invoke_compimg.tasks.cli import main as compimg

    sys.argv = ["compimg", "build", "--builder", "buildkit", "--progress", "quiet", *sys.argv[1:]]
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        compimg()
    marks["end"] = time.perf_counter() - START
    print({name: round(seconds, 3) for name, seconds in marks.items()})


if __name__ == "__main__":
    main()
