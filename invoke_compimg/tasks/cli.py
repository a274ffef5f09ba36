"""The `compimg` console script: the same tasks, no `tasks.py` needed, with docker build's
habits:

    compimg build --tag run=my-app .              # seed style: context last
    compimg -f path/Dockerfile build -t my-app:1  # -f/--file names the Dockerfile
    compimg --context path build                  # path/Dockerfile, context path
    COMPIMG_DOCKERFILE=path/Dockerfile compimg parse
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from invoke import Argument, Config, Program
from invoke.exceptions import UncastableEnvVar

from ..errors import Interrupted, UserError
from .exits import as_exit

# Invoke's options that mean nothing for image builds are accepted but not shown.
_SHOWN = ("help", "version", "list", "file", "context", "dry", "debug")


class CompimgConfig(Config):  # type: ignore[misc]
    """Invoke casts an INVOKE_* environment string by the type of the value a config file
    gave that key (`jobs: 2` then makes INVOKE_COMPIMG_JOBS=abc a ValueError traceback):
    here that is one line, as every other bad setting is."""

    def load_shell_env(self) -> None:
        try:
            super().load_shell_env()
        except (UncastableEnvVar, ValueError) as exc:
            raise as_exit(UserError(f"an INVOKE_* environment variable does not fit the type its config file gives it "
                            f"({exc}); give it a value of that type, or unset it")) from None


class CompimgProgram(Program):  # type: ignore[misc]
    def core_args(self) -> list[Argument]:
        args = []
        for arg in super().core_args():
            if arg.name in ("config", "dry", "pty", "warn-only"):  # -f is the Dockerfile here
                arg.names = (arg.name,)
            args.append(arg)
        return [
            *args,
            Argument(names=("file", "f"), help="the compilation-image Dockerfile (default: "
                     "$COMPIMG_DOCKERFILE, or Dockerfile in the context folder)"),
            Argument(names=("context",), help="build context folder (default: $COMPIMG_CONTEXT, "
                     "the folder given last on the command line, or the Dockerfile's folder)"),
        ]

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [-f DOCKERFILE] [--context DIR] <task> [--task-opts] ... [CONTEXT]")
        print("")
        print("Options:")
        print("")
        shown = [(names, text) for names, text in self.initial_context.help_tuples()
                 if (long := re.search(r"--([a-z-]+)", names)) and long.group(1) in _SHOWN]
        self.print_columns(shown)
        # Invoke prints bare --help before loading tasks; ours are one Dockerfile away.
        if getattr(self, "collection", None) is None:
            self.load_collection()
        self.scoped_collection, self.list_root, self.list_depth, self.list_format = self.collection, None, None, "flat"
        print("")
        self.list_tasks()

    def load_collection(self) -> None:
        from .plugin import collection

        given = self.args["file"].value or os.environ.get("COMPIMG_DOCKERFILE")
        folder = self.args["context"].value or os.environ.get("COMPIMG_CONTEXT") or _positional_context
        if given:
            dockerfile = Path(given)
            context = Path(folder) if folder else dockerfile.parent
        else:
            context = Path(folder or ".")
            dockerfile = context / "Dockerfile"
        # The tasks sit at the top level here (`compimg build`); their config key stays
        # "compimg", as under `invoke`.
        self.collection = collection(dockerfile.resolve(), context.resolve(), "compimg", base=Path.cwd(),
                                     prefix="compimg ", stages=_mentions_stage_tasks(sys.argv[1:]))
        self.collection.name = None
        # The project's config (invoke.yaml) is the context folder's, as a tasks.py's is its folder's.
        self.config.set_project_location(str(context.resolve()))
        self.config.load_project()


program = CompimgProgram(name="compimg", binary="compimg", config_class=CompimgConfig)
_positional_context: str | None = None


def _mentions_stage_tasks(argv: list[str]) -> bool:
    """Could this command line run or show a `stage.<name>` task? Without one, the stage
    tasks are left out: a 6,000-stage file parses in a few milliseconds, while Invoke's
    parser spends about a second on 6,000 tasks it would never run."""
    from .plugin import lists_tasks

    return lists_tasks(argv) or any(word.startswith(("stage.", "--complete")) for word in argv)


def split_context(argv: list[str]) -> tuple[list[str], str | None]:
    """`compimg build --tag=run=app .`: the seed's (and docker build's) context comes last.
    A last word that is an existing folder, and not the value of an option before it, is
    taken off and used as the context."""
    if len(argv) < 2:
        return argv, None
    last, before = argv[-1], argv[-2]
    if last.startswith("-") or not os.path.isdir(last):
        return argv, None
    if before.startswith("-") and "=" not in before and before.lstrip("-") not in switches():
        return argv, None  # it is that option's value (`--dest out`)
    return argv[:-1], last


def switches() -> set[str]:
    """The flags that take no value, so the word after one is not its value: our tasks'
    (from their signatures) and Invoke's core ones (`--list` and `--help` take a value only
    when one is given with `=`)."""
    from .operation import OPERATIONS
    from .plugin import collection  # noqa: F401  (registers the operations)

    core = {name for arg in program.core_args() if not arg.takes_value or arg.optional for name in arg.names}
    return core | {flag for op in OPERATIONS.values() for flag in op.switches()}


def _interrupted(signum: int, frame: Any) -> None:
    raise as_exit(Interrupted())


def main() -> None:
    global _positional_context
    # Invoke turns Ctrl-C outside a task body into exit status 1; ours is 130 everywhere.
    signal.signal(signal.SIGINT, _interrupted)
    argv, _positional_context = split_context(list(sys.argv))
    from .. import __getattr__ as package_attr

    program.version = package_attr("__version__")
    try:
        program.run(argv)
    except BrokenPipeError:  # `compimg --list | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
