"""The `compimg` console script: the same tasks, no `tasks.py` needed, with docker build's
habits:

    compimg build --tag run=my-app .              # seed style: context last
    compimg build . -t my-app -f ci.Dockerfile    # or anywhere among the flags, as docker build
    compimg -f path/Dockerfile build -t my-app:1  # -f/--file names the Dockerfile
    compimg --context path build                  # path/Dockerfile, context path
    COMPIMG_DOCKERFILE=path/Dockerfile compimg parse
"""

from __future__ import annotations

import atexit
import inspect
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from invoke import Argument, Config, Program
from invoke.exceptions import UncastableEnvVar

from ..dockerfile.model import closest
from ..errors import Interrupted, UserError
from .exits import STOP_SIGNALS, as_exit, ignore_further_interrupts
from .operation import DEFAULT_TASK, OPERATIONS

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
                     "a folder given among the task's words, or the Dockerfile's folder)"),
        ]

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [-f DOCKERFILE] [--context DIR] [<task>] [--task-opts] ... [CONTEXT]")
        print(f"       (no task: {DEFAULT_TASK}; `{self.binary} -q .` is `{self.binary} {DEFAULT_TASK} -q .`)")
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
        from .plugin import collection, lists_tasks

        given = self.args["file"].value or os.environ.get("COMPIMG_DOCKERFILE")
        folder = self.args["context"].value or os.environ.get("COMPIMG_CONTEXT") or _positional_context
        if given:
            dockerfile = Path(given)
            context = Path(folder) if folder else dockerfile.parent
        else:
            context = Path(folder or ".")
            dockerfile = context / "Dockerfile"
        # The tasks sit at the top level here (`compimg build`); their config key stays
        # "compimg", as under `invoke`. Help never needs a Dockerfile: a missing or broken one
        # is reported by --list and by the tasks that use it.
        argv = sys.argv[1:]
        self.collection = collection(dockerfile.resolve(), context.resolve(), "compimg", base=Path.cwd(),
                                     prefix="compimg ", stages=_mentions_stage_tasks(argv),
                                     operations=_named_operations(argv),
                                     report=lists_tasks(argv) and not _asks_for_help(argv))
        self.collection.name = None
        # The project's config (invoke.yaml) is the context folder's, as a tasks.py's is its folder's.
        self.config.set_project_location(str(context.resolve()))
        self.config.load_project()

    def print_version(self) -> None:
        """The version is read from the installed distribution only when asked for (4 ms of
        importlib.metadata otherwise paid by every command)."""
        from .. import __getattr__ as package_attr

        self.version = package_attr("__version__")
        super().print_version()


program = CompimgProgram(name="compimg", binary="compimg", config_class=CompimgConfig)
_positional_context: str | None = None


def _mentions_stage_tasks(argv: list[str]) -> bool:
    """Could this command line run or show a `stage.<name>` task? Without one, the stage
    tasks are left out: a 6,000-stage file parses in a few milliseconds, while Invoke's
    parser spends about a second on 6,000 tasks it would never run."""
    from .plugin import lists_tasks

    return lists_tasks(argv) or any(word.startswith(("stage.", "--complete")) for word in argv)


def _named_operations(argv: list[str]) -> set[str] | None:
    """The operations this command line can run (None: all, to list, help or complete): Invoke's
    parser copies the flags of every task it knows, twice, about 1 ms for each operation
    a build would never run. Any word that is an operation's name counts (a flag's value too:
    one more task is harmless), and the default task always does (`compimg -t shell .` runs it)."""
    from .plugin import lists_tasks

    if lists_tasks(argv) or any(word.startswith("--complete") for word in argv):
        return None
    return ({word.replace("_", "-") for word in argv} & set(OPERATIONS)) | {DEFAULT_TASK}


def _asks_for_help(argv: list[str]) -> bool:
    return any(word in ("-h", "--help") or word.startswith("--help=") for word in argv)


_WHERE = ("-f", "--file", "--context")  # where the project is: read before any task is loaded


def arrange(argv: list[str]) -> tuple[list[str], str | None]:
    """docker build's habits on Invoke's parser, which reads core flags only before the
    first task and knows no context argument: `-f/--file` and `--context` are taken from
    anywhere (`compimg build -f ci.Dockerfile`) and put first; a word that is an existing
    folder, where a task expects no more positional argument, is the context, anywhere
    among the flags (`compimg build . -t app`); and the default task's flags given with no
    task name are its (`compimg -q .` is `compimg build -q .`). Returns the arguments and
    that context."""
    from .build_flags import OUTPUT_FLAGS
    from .operation import DEFAULT_TASK, LOAD_TIME_FLAGS, OPERATIONS, SHORT_FLAGS
    from .plugin import collection  # noqa: F401  (registers the operations)

    core = {name for arg in program.core_args() for name in arg.names}
    core_values = {name for arg in program.core_args() if arg.takes_value and not arg.optional
                   for name in arg.names}

    def flags_of(task: str) -> dict[str, inspect.Parameter]:
        """The flags of `task` (an operation, or `stage.<name>`), by each name they go by."""
        op = OPERATIONS.get(task, OPERATIONS[DEFAULT_TASK])
        params = {p.name.replace("_", "-"): p for p in op.flags()
                  if task in OPERATIONS or p.name in OUTPUT_FLAGS}
        params.update({short: params[long] for long, short in SHORT_FLAGS.items() if long in params})
        return params

    lifted: list[str] = []
    rest: list[str] = argv[:1]
    context: str | None = None
    task: str | None = None  # the task whose flags are being read (None: the core flags)
    params: dict[str, inspect.Parameter] = {}  # its flags
    positional: list[str] = []  # its positional arguments not given yet
    orphans: list[str] = []  # the default task's flags, given before any task name
    words = iter(argv[1:])
    for word in words:
        name, eq, _ = word.partition("=")
        if word == "--":
            rest += [word, *words]
            break
        if name in _WHERE:
            lifted += [word] if eq else [word, next(words, "")]
            continue
        if word.startswith("-"):
            if task is not None and name in LOAD_TIME_FLAGS:
                raise UserError(f"{name} after the task is Invoke's own {LOAD_TIME_FLAGS[name]}, which means "
                                f"nothing here; see `compimg --help {task}` for the task's own flags")
            flag = name.lstrip("-")
            if task is None and flag not in core and flag in flags_of(DEFAULT_TASK):
                taken = flags_of(DEFAULT_TASK)[flag]  # the default task's, named or not: after its name
                orphans.append(word)
                if not isinstance(taken.default, bool) and not eq:
                    orphans.append(next(words, ""))
                continue
            rest.append(word)
            if task is None:
                takes_value = flag in core_values
            else:
                takes_value = flag in params and not isinstance(params[flag].default, bool)
                if flag in params and params[flag].name in positional:
                    positional.remove(params[flag].name)
            if takes_value and not eq:
                rest.append(next(words, ""))
            continue
        if task is not None and positional:
            positional.pop(0)
            rest.append(word)
        elif word in OPERATIONS or word.startswith("stage."):
            task, params = word, flags_of(word)
            positional = OPERATIONS[word].positional() if word in OPERATIONS else []
            rest += [word, *orphans]  # `compimg -q build`: -q is build's
            orphans = []
        elif os.path.isdir(word):
            if context is not None:
                raise UserError(f"two build contexts given, '{context}' and '{word}'; give one")
            context = word
        else:
            near = closest(word, OPERATIONS) if not word.startswith("-") and not os.path.exists(word) else None
            if near:
                raise UserError(f"no task '{word}'; did you mean '{near}'? (`compimg --list` shows them all)")
            rest.append(word)  # Invoke says it has "no idea what" this is
    if orphans:  # `compimg -q`: no task name, so the default task's
        rest[rest.index("--") if "--" in rest else len(rest):0] = [DEFAULT_TASK, *orphans]
    return [*rest[:1], *lifted, *rest[1:]], context


def _interrupted(signum: int, frame: Any) -> None:
    ignore_further_interrupts()
    raise as_exit(Interrupted(code=128 + signum))


def main() -> None:
    global _positional_context
    # Invoke turns Ctrl-C outside a task body into exit status 1; ours is 130 everywhere.
    # SIGTERM (a cancelled CI job) and SIGHUP (a closed terminal) clean up the same way.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupted)
    try:
        argv, _positional_context = arrange(list(sys.argv))
    except UserError as error:
        print(error, file=sys.stderr)
        sys.exit(error.code)
    try:
        program.run(argv)
    except BrokenPipeError:  # `compimg --list | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def run() -> None:
    """The `compimg` command: `main`, then the process ends without Python's teardown.

    Freeing every module and object at exit took 25-45 ms of a 0.3 s warm no-op here (with
    0.15 s for all of `invoke --version`). Nothing of ours is left to it: what a build makes
    is removed by the code that made it, threads that are not daemons are waited for, and
    exit handlers (temporary folders' finalizers among them) still run."""
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    shutdown = getattr(threading, "_shutdown", None)  # what Python's own exit does: waits for the
    if shutdown is not None:  # threads that are not daemons, and runs the hooks that end idle pools
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python prints it
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), or a stream closed
            code = code or 1
    os._exit(code or 0)
