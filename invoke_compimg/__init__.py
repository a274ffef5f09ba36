"""invoke-compimg: compilation-image Dockerfiles as Invoke tasks.

In a `tasks.py`::

    from invoke import Collection
    import invoke_compimg

    ns = Collection()
    ns.add_collection(invoke_compimg.collection())   # ./Dockerfile, context "."

From your own task bodies, the same operations are functions taking the context first:
`build`, `build_stage`, `assemble`, `extract_artifact`, `shell`, `clean` and `parse`,
each with keyword-only `dockerfile=` and `context=` (relative to the calling module's
folder, as for `collection()`, or to `base=`) and `key=` (the config key, "compimg").
"""

from __future__ import annotations

import gc
from typing import Any

# Importing makes tens of thousands of objects that live as long as the process, and no
# garbage; Python's cycle collector still swept them 50-70 times (with Invoke's own import when
# the `compimg` command imports it), and twice more each once they were made. It rests during
# the imports, and then every object alive goes straight to its oldest generation (frozen and
# unfrozen at once, unless the program froze objects itself; garbage among them is collected at
# the next full collection): 40-50 ms of a 0.3 s start-up here.
_collecting = gc.isenabled()
gc.disable()
try:
    from .building.project import Project
    from .errors import EngineError, UserError
    from .tasks.plugin import (
        assemble,
        build,
        build_stage,
        clean,
        collection,
        extract_artifact,
        make_collection,
        parse,
        project,
        shell,
    )
finally:
    if not gc.get_freeze_count():
        gc.freeze()
        gc.unfreeze()
    if _collecting:
        gc.enable()

extract = extract_artifact  # the name of the first release's API

__all__ = [
    "EngineError", "Project", "UserError", "assemble", "build", "build_stage", "clean", "collection",
    "extract", "extract_artifact", "make_collection", "parse", "project", "shell",
]


def __getattr__(name: str) -> Any:
    """`__version__`, read from the installed distribution (one version: pyproject's) only
    when asked for: importlib.metadata costs tens of milliseconds at start-up."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("invoke-compimg")
        except PackageNotFoundError:  # a checkout that was never installed
            return "0+unknown"
    raise AttributeError(name)
