"""The `compimg` console script: the same tasks, no `tasks.py` needed.

    compimg build --tag run=my-app                 # ./Dockerfile, context .
    compimg --dockerfile path/Dockerfile --context path build
    COMPIMG_DOCKERFILE=path/Dockerfile compimg parse
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from invoke import Argument, Program

from . import __version__
from .errors import Interrupted


class CompimgProgram(Program):  # type: ignore[misc]
    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(names=("dockerfile",), help="compilation-image Dockerfile "
                     "(default: $COMPIMG_DOCKERFILE or ./Dockerfile)"),
            Argument(names=("context",), help="build context folder (default: "
                     "$COMPIMG_CONTEXT, or the Dockerfile's folder)"),
        ]

    def load_collection(self) -> None:
        from .plugin import make_collection
        from .project import Project

        dockerfile = Path(self.args["dockerfile"].value or os.environ.get("COMPIMG_DOCKERFILE")
                          or "Dockerfile")
        context = Path(self.args["context"].value or os.environ.get("COMPIMG_CONTEXT")
                       or dockerfile.parent)
        # The tasks sit at the top level here (`compimg build`); their config key stays
        # "compimg", as under `invoke`.
        self.collection = make_collection(Project(dockerfile, context), "compimg")
        self.collection.name = None


program = CompimgProgram(name="compimg", binary="compimg", version=__version__)


def _interrupted(signum: int, frame: Any) -> None:
    raise Interrupted()


def main() -> None:
    # Invoke turns Ctrl-C outside a task body into exit status 1; ours is 130 everywhere.
    signal.signal(signal.SIGINT, _interrupted)
    try:
        program.run()
    except BrokenPipeError:  # `compimg --list | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
