"""invoke-compimg: compilation-image Dockerfiles as Invoke tasks.

In a `tasks.py`::

    from invoke import Collection
    import invoke_compimg

    ns = Collection()
    ns.add_collection(invoke_compimg.collection())   # ./Dockerfile, context "."

From your own task bodies, the same operations are functions taking the context first:
`build`, `assemble`, `extract`, `shell`, `clean` and `parse`, each with `dockerfile=` and
`context=` (relative to the current folder) and `key=` (the config key, "compimg").
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from invoke import Context

from . import plugin
from .errors import EngineError, UserError
from .plugin import collection, make_collection
from .project import Project

__all__ = [
    "EngineError", "Project", "UserError", "assemble", "build", "clean", "collection",
    "extract", "make_collection", "parse", "project", "shell",
]
__version__ = "0.1.0"


@cache
def _project(dockerfile: Path, context: Path) -> Project:
    return Project(dockerfile, context)


def project(dockerfile: str | Path = "Dockerfile", context: str | Path = ".") -> Project:
    """The parsed project for `dockerfile` (one per path in this process)."""
    return _project(Path(dockerfile).resolve(), Path(context).resolve())


def build(c: Context, target: str | None = None, tags: Any = (), build_args: Any = (),
          no_cache: bool | None = None, push: bool | None = None, *,
          dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
          key: str = "compimg") -> dict[str, str]:
    """Like `invoke compimg.build`; `tags` and `build_args` take the CLI's `STAGE=REF` and
    `KEY=VALUE` strings. Returns {stage: image ID}."""
    return plugin.build(c, project(dockerfile, context), target, tags, build_args, no_cache,
                        push, key=key)


def assemble(c: Context, stage: str | None = None, tags: Any = (), *,
             dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
             key: str = "compimg") -> str:
    return plugin.assemble(c, project(dockerfile, context), stage, tags, key=key)


def extract(c: Context, artifact: str, dest: str = ".", *, dockerfile: str | Path = "Dockerfile",
            context: str | Path = ".", key: str = "compimg") -> list[str]:
    return plugin.extract(c, project(dockerfile, context), artifact, dest, key=key)


def shell(c: Context, stage: str, cmd: str = "sh", *, dockerfile: str | Path = "Dockerfile",
          context: str | Path = ".", key: str = "compimg") -> None:
    plugin.shell(c, project(dockerfile, context), stage, cmd, key=key)


def clean(c: Context, *, dockerfile: str | Path = "Dockerfile", context: str | Path = ".") -> None:
    plugin.clean_project(c, project(dockerfile, context))


def parse(c: Context, format: str = "text", stage: str | None = None, lowered: bool = False, *,
          dockerfile: str | Path = "Dockerfile", context: str | Path = ".") -> str:
    return plugin.parse(c, project(dockerfile, context), format, stage, lowered)
