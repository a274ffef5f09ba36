"""What a collection binds its tasks to: one Dockerfile, its context, the config key, and
how hints name the tasks. The Python API makes the same binding from its keyword-only
arguments, with relative paths taken from the calling module's folder (or `base=`)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from invoke import Context

from ..building.project import Project
from ..building.settings import Settings, resolve
from ..records import record

_projects: dict[tuple[Path, Path], Project] = {}


def project_at(dockerfile: Path, context: Path) -> Project:
    """One parsed project per (Dockerfile, context) in this process."""
    key = (dockerfile, context)
    if key not in _projects:
        _projects[key] = Project(dockerfile, context)
    return _projects[key]


def remember(project: Project) -> None:
    """Use `project` (already parsed) for its paths from now on."""
    _projects[(project.dockerfile.resolve(), project.context.resolve())] = project


def forget_projects() -> None:
    """Parse every Dockerfile again when next asked, as a new process would (tests of
    several invocations in one process use this)."""
    _projects.clear()


def caller_folder(frame: FrameType) -> Path:
    """The folder relative paths start from for code running in `frame`: its top-level
    module's folder (a `tasks.py`'s), or for a `tasks/` package (its `__init__.py` or a
    module in it) the folder holding `tasks/`, where Invoke found it."""
    caller = frame.f_globals
    top = sys.modules.get(str(caller.get("__name__", "")).partition(".")[0])
    top_file = getattr(top, "__file__", None) if top is not None else None
    if top_file and hasattr(top, "__path__"):  # a package: its folder's parent
        return Path(top_file).resolve().parent.parent
    file = top_file or caller.get("__file__")
    return Path(file).resolve().parent if file else Path.cwd()


def task_prefix(key: str, prefix: str | None = None) -> str:
    """What the user types before a task's name: the collection's name and a dot under
    `invoke` ("app." for `collection(name="app")`), "compimg " under the `compimg` command."""
    return f"{key}." if prefix is None else prefix


@record
class Binding:
    """The project an operation works on, where its config lives, and how it talks.

    `as_task`: run as a task, which prints what it shows (a parse's text, a quiet build's
    image ID); from the Python API the result is returned instead."""

    dockerfile: Path
    context: Path
    key: str = "compimg"
    prefix: str = "compimg."
    as_task: bool = False

    @classmethod
    def of(cls, dockerfile: str | Path, context: str | Path, key: str = "compimg", *, root: Path,
           prefix: str | None = None, as_task: bool = False) -> Binding:
        """Relative `dockerfile` and `context` taken from `root`."""
        return cls((root / dockerfile).resolve(), (root / context).resolve(), key, task_prefix(key, prefix), as_task)

    @property
    def project(self) -> Project:
        return project_at(self.dockerfile, self.context)

    def task(self, name: str) -> str:
        """What the user types to run task `name`: `compimg.shell`, `compimg shell`."""
        return self.prefix + name

    def help_command(self, name: str) -> str:
        if self.prefix.endswith(" "):  # the compimg command: "compimg --help shell"
            return f"{self.prefix.strip()} --help {name}"
        return f"invoke --help {self.prefix}{name}"

    def env_prefix(self, c: Context) -> str:
        """`INVOKE_COMPIMG`: Invoke's prefix (kept as "INVOKE_") and the collection's key."""
        return (getattr(c.config, "_env_prefix", None) or "INVOKE_").rstrip("_") + "_" + self.key.upper()

    def settings(self, c: Context, *, target: str, tags: Any = (), build_args: Any = (), **flags: Any) -> Settings:
        """Flags (None: not given), then config under our key and its environment
        variables, then defaults (`settings.resolve`)."""
        return resolve(self.project.graph, c.config.get(self.key), target=target, tags=strings(tags),
                       build_args=strings(build_args), env_prefix=self.env_prefix(c), task_prefix=self.prefix,
                       **flags)


def strings(values: Any) -> list[str]:
    """A list flag's values. From the Python API a single string is one value (`tag="app"`),
    not its letters."""
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]
