"""Invoke glue: a `Collection` of tasks made from one compilation-image Dockerfile.

Settings come from three places, strongest first: CLI flags, config under the
collection's key (`ns.configure`, `invoke.yaml`, `INVOKE_COMPIMG_*`), defaults.
Pre-tasks get no CLI flags, so they read config only.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Context, Task

from .errors import Interrupted, UserError
from .project import Project, Settings, parse_build_args, parse_tags
from .render import FORMATS

# The engine modules (and so the Docker SDK) are imported by the operations that talk to
# the engine, when they run: a tasks.py that adds our collection keeps `invoke --list` and
# the user's other tasks quick.

DEFAULTS: dict[str, Any] = {
    "tags": {},  # stage -> ref or [refs]
    "build_args": {},
    "target": None,
    "no_cache": False,
    "push": False,
    "network": None,  # engine default, like `docker build`
    "jobs": 4,  # stages built at the same time
}


class CompimgTask(Task):  # type: ignore[misc]
    """A task that is equal only to itself.

    Invoke's `Task.__eq__` compares the name and the body's code object, so tasks made by
    one closure (one per stage, or the same task in two collections) would be taken for one
    another and deduplicated away."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


def _task(body: Callable[..., Any], name: str, *, help: Mapping[str, str] | None = None,
          iterable: Iterable[str] = (), pre: Iterable[Task] = (), optional: Iterable[str] = (),
          positional: Iterable[str] | None = None) -> CompimgTask:
    return CompimgTask(body, name=name, help=dict(help or {}), iterable=list(iterable),
                       pre=list(pre), optional=list(optional),  # type: ignore[arg-type]
                       positional=positional)


def _config(c: Context, key: str) -> dict[str, Any]:
    section = c.config.get(key) or {}
    merged = dict(DEFAULTS)
    merged.update({k: section[k] for k in section})
    return merged


def _config_tags(project: Project, raw: Any) -> dict[str, tuple[str, ...]]:
    values: list[str] = []
    for stage, refs in dict(raw or {}).items():
        for ref in [refs] if isinstance(refs, str) else list(refs):
            values.append(f"{stage}={ref}")
    return parse_tags(values, project.graph.final.name, project)


def _settings(c: Context, key: str, project: Project, *, tags: Iterable[str] = (),
              default_tag_stage: str | None = None, build_args: Iterable[str] = (),
              no_cache: bool | None = None, push: bool | None = None, jobs: int | None = None) -> Settings:
    config = _config(c, key)
    merged_tags = _config_tags(project, config["tags"])
    merged_tags.update(parse_tags(tags, default_tag_stage or project.graph.final.name, project))
    args = {str(k): str(v) for k, v in dict(config["build_args"] or {}).items()}
    args.update(parse_build_args(build_args))
    return Settings(
        tags=merged_tags, build_args=args,
        no_cache=bool(config["no_cache"] if no_cache is None else no_cache),
        network=config["network"] or None,
        push=bool(config["push"] if push is None else push),
        jobs=_positive(config["jobs"] if jobs is None else jobs, "jobs"),
    )


def _positive(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise UserError(f"--{name} {value}: give a whole number of at least 1")
    return number


def collection(dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
               name: str = "compimg", *, base: str | Path | None = None) -> Collection:
    """The tasks for `dockerfile`, built in `context`.

    Relative paths are taken from the folder of the calling `tasks.py` (so `invoke` works
    from any subfolder), or from `base` when given. The file is parsed and checked now,
    before any task is wired, so a broken file is reported before anything runs."""
    if base is None:
        caller = sys._getframe(1).f_globals.get("__file__")
        base = Path(caller).resolve().parent if caller else Path.cwd()
    root = Path(base)
    try:
        project = Project(root / dockerfile, root / context)
    except KeyboardInterrupt:
        raise Interrupted() from None
    return make_collection(project, name)


# --- operations: the tasks' bodies and the Python API (`invoke_compimg.build(c, ...)`) ---

F = TypeVar("F", bound=Callable[..., Any])


def interruptible(func: F) -> F:
    """Ctrl-C becomes one line and exit status 130, after the `finally` blocks below have
    removed what this run made (temporary containers, staging folders)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted() from None

    return wrapper  # type: ignore[return-value]


@interruptible
def parse(c: Context, project: Project, format: str = "text", stage: str | None = None,
          lowered: bool = False) -> str:
    graph = project.graph
    if lowered:
        text = graph.lowered(project.stage(stage, flag="--stage").name if stage else graph.final.name)
    elif format in FORMATS:
        text = FORMATS[format](graph)
    else:
        raise UserError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    print(text, end="")
    return text


@interruptible
def build(c: Context, project: Project, target: str | None = None, tags: Iterable[str] = (),
          build_args: Iterable[str] = (), no_cache: bool | None = None, push: bool | None = None,
          key: str = "compimg", jobs: int | None = None) -> dict[str, str]:
    """Build `target` (default: config, then the final stage) and what it needs; return
    {stage: image ID}."""
    target = target or _config(c, key)["target"]
    goal = project.stage(target, flag="--target").name if target else project.graph.final.name
    from .pipeline import Builder

    b = Builder(project, _settings(c, key, project, tags=tags, default_tag_stage=goal,
                                   build_args=build_args, no_cache=no_cache, push=push, jobs=jobs))
    ids = b.build(goal)
    print(b.table(), end="")
    if b.settings.push:
        b.push()
    return ids


@interruptible
def assemble(c: Context, project: Project, stage: str | None = None, tags: Iterable[str] = (),
             key: str = "compimg") -> str:
    """Build one stage from its prerequisites' existing images; return its image ID."""
    goal = project.stage(stage).name if stage else project.graph.final.name
    from .pipeline import Builder

    b = Builder(project, _settings(c, key, project, tags=tags, default_tag_stage=goal))
    result = b.build_stage(project.graph.stage(goal))
    print(b.table(), end="")
    return result.image_id


@interruptible
def extract(c: Context, project: Project, artifact: str, dest: str = ".", key: str = "compimg") -> list[str]:
    """Copy STAGE:/PATH onto the host under `dest`; return the top-level names written."""
    from .pipeline import Builder, extract_artifact

    result = extract_artifact(project, Builder(project, _settings(c, key, project)), artifact, dest)
    print(f"extracted {artifact} -> {', '.join(str(Path(dest) / n) for n in result.names)}"
          f" ({result.files} entries)")
    for skipped in result.skipped:
        print(f"skipped special file {skipped} (devices and FIFOs are never extracted)")
    return result.names


@interruptible
def shell(c: Context, project: Project, stage: str, cmd: str = "sh", key: str = "compimg") -> None:
    import shlex

    goal = project.stage(stage).name
    from . import engine
    from .pipeline import Builder

    b = Builder(project, _settings(c, key, project))
    image_id = b.build(goal)[goal]
    engine.reap_leftovers(b.api, project.slug)
    status = engine.run_shell(b.api, image_id, shlex.split(cmd), project.slug)
    if status:
        raise UserError(f"`{cmd}` in stage '{goal}' exited with status {status}", code=status)


@interruptible
def clean_project(c: Context, project: Project) -> None:
    from . import engine
    from .pipeline import clean

    clean(project, engine.connect(), sys.stdout)


def make_collection(project: Project, name: str = "compimg") -> Collection:
    ns = Collection(name)
    ns.configure({name: dict(DEFAULTS)})

    def parse_task(c: Context, format: str = "text", stage: str | None = None, lowered: bool = False) -> None:
        """Show the stage graph (text, json, dot, mermaid, native) or a lowered stage."""
        parse(c, project, format, stage, lowered)

    def build_task(c: Context, target: str | None = None, tag: list[str] | None = None,
                   build_arg: list[str] | None = None, no_cache: bool = False,
                   push: bool = False, jobs: int | None = None) -> dict[str, str]:
        """Build the final stage (or --target) and every stage it needs, nothing else."""
        # A flag that is not given (False) leaves the decision to config.
        return build(c, project, target, tag or [], build_arg or [], no_cache or None, push or None,
                     key=name, jobs=jobs)

    def build_stage_task(c: Context, stage: str, tag: list[str] | None = None,
                         build_arg: list[str] | None = None, no_cache: bool = False) -> dict[str, str]:
        """Build one stage and only the stages it needs (for debugging)."""
        goal = project.stage(stage).name
        return build(c, project, goal, tag or [], build_arg or [], no_cache or None, False, key=name)

    def extract_task(c: Context, artifact: str, dest: str = ".") -> None:
        """Copy STAGE:/PATH out of a stage's image onto the host (like `docker cp`)."""
        extract(c, project, artifact, dest, key=name)

    def assemble_task(c: Context, stage: str | None = None, tag: str | None = None) -> str:
        """Build the final (or named) stage from its prerequisites' existing images."""
        return assemble(c, project, stage, [tag] if tag else [], key=name)

    def shell_task(c: Context, stage: str, cmd: str = "sh") -> None:
        """Open a shell (or run --cmd) in a stage's image, for debugging that stage."""
        shell(c, project, stage, cmd, key=name)

    def clean_task(c: Context) -> None:
        """Remove the images and temporary containers this project's builds made, nothing else."""
        clean_project(c, project)

    tag_help = "STAGE=REF, or REF for the target stage; repeatable (seed's --tag=STAGE=REF)"
    arg_help = "KEY=VALUE build argument; repeatable"
    ns.add_task(_task(parse_task, "parse", help={
        "format": f"one of {', '.join(FORMATS)} (default text)",
        "stage": "stage to show with --lowered (default: final)",
        "lowered": "print the single-stage Dockerfile sent to the engine for --stage",
    }), default=False)
    ns.add_task(_task(build_task, "build", iterable=["tag", "build_arg"], help={
        "target": "stage to build (default: the final stage); only what it needs is built",
        "tag": tag_help, "build-arg": arg_help,
        "no-cache": "rebuild everything: no engine cache, no reuse of unchanged stages",
        "push": "push every tagged ref afterwards",
        "jobs": "stages built at the same time (default 4)",
    }), default=True)
    ns.add_task(_task(build_stage_task, "build-stage", iterable=["tag", "build_arg"], help={
        "stage": "the stage to build", "tag": "REF to tag the stage with; repeatable",
        "build-arg": arg_help, "no-cache": "do not use the engine's cache",
    }))
    ns.add_task(_task(extract_task, "extract-artifact", help={
        "artifact": "STAGE:/PATH to copy out (a file or a directory)",
        "dest": "folder to copy into (default: current folder)",
    }))
    ns.add_task(_task(assemble_task, "assemble", help={
        "stage": "stage to assemble (default: the final stage)", "tag": "REF to tag it with",
    }))
    ns.add_task(_task(shell_task, "shell", help={
        "stage": "stage whose image to open", "cmd": "command to run instead of `sh`",
    }))
    ns.add_task(_task(clean_task, "clean"))
    ns.add_collection(_stage_collection(project, name))
    return ns


def _stage_collection(project: Project, key: str) -> Collection:
    """`stage.<name>`: one task per stage whose pre-tasks are exactly the stages it uses.
    The graph is already checked (no cycles: stages only look backwards)."""
    stages = Collection("stage")
    tasks: dict[str, CompimgTask] = {}
    for stage in project.graph.stages:
        body = _stage_body(project, key, stage.name)
        base = f"stage {stage.base}" if stage.base_stage else stage.base
        body.__doc__ = f"Build stage '{stage.name}' (line {stage.line}, FROM {base})."
        tasks[stage.name] = _task(body, stage.task_name, pre=[tasks[d] for d in stage.depends_on])
        stages.add_task(tasks[stage.name])
    return stages


def _stage_body(project: Project, key: str, stage_name: str) -> Callable[[Context], str]:
    @interruptible
    def body(c: Context) -> str:
        from .pipeline import Builder

        b = Builder(project, _settings(c, key, project))
        result = b.build_stage(project.graph.stage(stage_name))
        print(f"[{stage_name}] built {result.image_id.split(':')[-1][:12]} "
              f"({result.size / 1e6:.1f} MB) as {project.local_ref(stage_name)}")
        return result.image_id

    return body
