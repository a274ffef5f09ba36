"""Invoke glue: a `Collection` of tasks made from one compilation-image Dockerfile.

The operations below *are* the Python API and the task bodies (after pyinvoke's
invocations: the task is the function). Each takes the context first, then its flags,
then keyword-only `dockerfile`, `context`, `key` and `base`, which a collection binds for
its tasks. Settings are resolved in `settings.resolve`: flags, then config under the
collection's key, then defaults. Pre-tasks get no flags, so they read config only.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Argument, Collection, Context, Task

from ..building.project import Project
from ..building.settings import CONFIG_DEFAULTS, Settings, configured, resolve
from ..dockerfile.render import FORMATS
from ..errors import Interrupted, UserError
from ..names import short_id
from .exits import as_exit, exits

# The engine modules (and so the Docker SDK) are imported by the operations that talk to
# the engine, when they run: a tasks.py that adds our collection keeps `invoke --list` and
# the user's other tasks quick.



class CompimgTask(Task):  # type: ignore[misc]
    """A task that is equal only to itself, whose CLI flags are the body's ordinary
    parameters (keyword-only ones are bound by the collection), with `-t` for `--tag`.

    Invoke's `Task.__eq__` compares the name and the body's code object, so tasks made by
    one closure (one per stage, or the same task in two collections) would be taken for one
    another and deduplicated away."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def argspec(self, body: Callable[..., Any]) -> inspect.Signature:
        sig = super().argspec(body)
        return sig.replace(parameters=[p for p in sig.parameters.values() if p.kind is not p.KEYWORD_ONLY])

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        # -t is docker build's --tag, never --target; -h stays Invoke's per-task --help.
        taken_names = taken_names | {"h"} | ({"t"} if name != "tag" else set())
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name == "tag":
            opts["names"] = ("tag", "t")
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args: list[Argument] = super().get_arguments(ignore_unknown_help)
        for arg in args:
            arg.__class__ = _Flag
            if arg.kind is list:
                # Invoke starts a list flag's raw value at [], so a trailing `--tag` with no
                # value passed silently (an untagged build); None makes its parser say so.
                arg.raw_value = None
        return args


class _Flag(Argument):  # type: ignore[misc]
    """An argument that Invoke's parse errors name as the user typed it: "Flag --tag
    needed value and was not given one!"."""

    def __repr__(self) -> str:
        return "--" + str(self.name).replace("_", "-")


# --- projects -----------------------------------------------------------------------------

_projects: dict[tuple[Path, Path], Project] = {}


def _project(dockerfile: Path, context: Path) -> Project:
    """One parsed project per (Dockerfile, context) in this process."""
    key = (dockerfile, context)
    if key not in _projects:
        _projects[key] = Project(dockerfile, context)
    return _projects[key]


def _caller_folder(depth: int) -> Path:
    """The folder of the calling module's top-level module: a `tasks.py`'s folder; for a
    `tasks/` package (its `__init__.py` or a module in it), the folder holding `tasks/`,
    where Invoke found it."""
    caller = sys._getframe(depth + 1).f_globals
    top = sys.modules.get(str(caller.get("__name__", "")).partition(".")[0])
    top_file = getattr(top, "__file__", None) if top is not None else None
    if top_file and hasattr(top, "__path__"):  # a package: its folder's parent
        return Path(top_file).resolve().parent.parent
    file = top_file or caller.get("__file__")
    return Path(file).resolve().parent if file else Path.cwd()


def project(dockerfile: str | Path = "Dockerfile", context: str | Path = ".", *,
            base: str | Path | None = None) -> Project:
    """The parsed project for `dockerfile` (one per path in this process). Relative paths
    are taken from `base`, by default the folder of the calling module (your tasks.py)."""
    root = Path(base) if base is not None else _caller_folder(1)
    return _project((root / dockerfile).resolve(), (root / context).resolve())


def _bound_project(kw: dict[str, Any]) -> Project:
    """The project named by an operation's keyword-only arguments."""
    base = kw.get("base")
    root = Path(base) if base is not None else _caller_folder(3)
    return _project((root / kw.get("dockerfile", "Dockerfile")).resolve(),
                    (root / kw.get("context", ".")).resolve())


def _settings(c: Context, key: str, project: Project, *, target: str, tags: Any = (),
              build_args: Any = (), prefix: str | None = None, **flags: Any) -> Settings:
    return resolve(project.graph, c.config.get(key), target=target, tags=list(tags or []),
                   build_args=list(build_args or []), env_prefix=_env_prefix(c, key),
                   task_prefix=_prefix(key, prefix), **flags)


def _env_prefix(c: Context, key: str) -> str:
    """`INVOKE_COMPIMG`: Invoke's prefix (kept as "INVOKE_") and the collection's key."""
    return (getattr(c.config, "_env_prefix", None) or "INVOKE_").rstrip("_") + "_" + key.upper()


def _prefix(key: str, prefix: str | None) -> str:
    """What the user types before a task's name: the collection's name and a dot under
    `invoke` ("app." for `collection(name="app")`), "compimg " under the `compimg` command."""
    return f"{key}." if prefix is None else prefix


def _positional(value: str, what: str, task: str, prefix: str) -> None:
    """Invoke fills a missing positional argument with the next word, even `--help`."""
    if value.startswith("-"):
        raise UserError(f"{task} needs {what} first, got '{value}'; for help on it run "
                        f"`{_help_command(prefix, task)}`")


def _help_command(prefix: str, task: str) -> str:
    if prefix.endswith(" "):  # the compimg command: "compimg --help shell"
        return f"{prefix.strip()} --help {task}"
    return f"invoke --help {prefix}{task}"


def _dry(c: Context) -> bool:
    return bool(c.config.get("run", {}).get("dry"))


# --- operations: the tasks' bodies and the Python API -------------------------------------

@exits
def parse(c: Context, format: str = "text", stage: str | None = None, lowered: bool = False, *,
          dockerfile: str | Path = "Dockerfile", context: str | Path = ".", key: str = "compimg",
          base: str | Path | None = None, prefix: str | None = None, echo: bool | None = None) -> str:
    """Show the stage graph (text, json, dot, mermaid, native) or a lowered stage."""
    from ..dockerfile.lowering import per_stage

    p = _bound_project(locals())
    task = _prefix(key, prefix) + "parse"
    if stage and not lowered:
        raise UserError(f"--stage goes with --lowered: write `{task} --lowered --stage {stage}`")
    if lowered and format != "text":
        raise UserError(f"--format {format} and --lowered are two different views: write "
                        f"`{task} --format {format}` or `{task} --lowered`")
    if lowered:
        text = per_stage(p.graph, p.stage(stage, flag="--stage").name if stage else p.graph.final.name).text
    elif format in FORMATS:
        text = FORMATS[format](p.graph)
    else:
        raise UserError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    # The task prints what it shows; from the Python API it is returned, and printed too
    # unless progress is quiet.
    if echo if echo is not None else _settings(c, key, p, target=p.graph.final.name).progress != "quiet":
        print(text, end="")
    return text


@exits
def build(c: Context, target: str | None = None, tag: list[str] | None = None,
          build_arg: list[str] | None = None, no_cache: bool = False, push: bool = False,
          jobs: int | None = None, builder: str | None = None, progress: str | None = None,
          pull: bool = False, cache_from: list[str] | None = None, cache_to: str | None = None,
          push_all: bool = False, network: str | None = None, *, dockerfile: str | Path = "Dockerfile",
          context: str | Path = ".", key: str = "compimg", base: str | Path | None = None,
          prefix: str | None = None, echo: bool = False) -> dict[str, str]:
    """Build the final stage (or --target) and every stage it needs, nothing else."""
    p = _bound_project(locals())
    target = target or configured(c.config.get(key), "target", _env_prefix(c, key))
    goal = p.stage(target, flag="--target").name if target else p.graph.final.name
    # A bool flag that is not given (False) leaves the decision to config.
    settings = _settings(c, key, p, target=goal, tags=_strings(tag), build_args=_strings(build_arg),
                         no_cache=no_cache or None, push=push or None, jobs=jobs, builder=builder,
                         progress=progress, pull=pull or None, cache_from=_strings(cache_from),
                         cache_to=cache_to, network=network, prefix=prefix)
    _check_tags(p, settings, goal, _strings(tag), "build --target")
    return _run_build(c, p, settings, goal, push_all=push_all, echo=echo)


def _strings(values: Any) -> list[str]:
    """A list flag's values. From the Python API a single string is one value (`tag="app"`),
    not its letters."""
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


def _check_tags(p: Project, settings: Settings, goal: str, flags: list[str], how: str) -> None:
    """A `--tag STAGE=REF` for a stage this build does not build would be a silent no-op.
    (Config tags name every stage a project has: those of stages not built are left.)"""
    from ..building.settings import parse_tags

    needed = {s.name for s in p.graph.needs(goal)}
    outside = sorted(set(parse_tags(flags, goal, p.graph)) - needed)
    if outside:
        raise UserError(f"--tag for stage(s) {', '.join(outside)}, which building '{goal}' does not build; "
                        f"run `{settings.task(how)} {outside[0]}`, or drop that tag")


def _run_build(c: Context, p: Project, settings: Settings, goal: str, *, push_all: bool = False,
               echo: bool = False) -> dict[str, str]:
    needed = [s.name for s in p.graph.needs(goal)]
    if _dry(c):
        tags = {s: r for s, r in settings.tags.items() if s in needed}
        print(f"would build {goal} ({', '.join(needed)}) from {p.dockerfile}"
              + "".join(f"; tag {s} as {', '.join(r)}" for s, r in tags.items())
              + ("; no cache" if settings.no_cache else "") + ("; push" if settings.push else ""))
        return {}
    from ..building import push as pushing
    from ..progress import make_reporter
    from ..run import BuildRun

    reporter = make_reporter(settings.progress)
    session = BuildRun(p, settings, reporter)
    try:
        ids = session.build([goal])
        session.summary(goal if goal == p.graph.final.name else None)
        if settings.push:
            # Every tag this push leaves out (another stage's, one this build did not make)
            # is one line: never silently dropped, never pushed from an older image.
            refs = pushing.plan(settings.tags, ids, goal, push_all, skipped=reporter.warning)
            if not refs:
                reporter.warning(f"--push: no tag for '{goal}' to push; add --tag REF")
            pushing.push(session.engine, refs, reporter, layers=reporter.live)
        if echo:  # the task prints the ID when quiet (`docker build -q`); the Python API returns it
            reporter.result(ids[goal])
        return ids
    finally:
        reporter.close()
        session.close()


@exits
def build_stage(c: Context, stage: str, tag: list[str] | None = None, build_arg: list[str] | None = None,
                no_cache: bool = False, progress: str | None = None, *,
                dockerfile: str | Path = "Dockerfile", context: str | Path = ".", key: str = "compimg",
                base: str | Path | None = None, prefix: str | None = None, echo: bool = False) -> dict[str, str]:
    """Build one stage and only the stages it needs (for debugging)."""
    p = _bound_project(locals())
    _positional(stage, "a STAGE", "build-stage", _prefix(key, prefix))
    goal = p.stage(stage).name
    settings = _settings(c, key, p, target=goal, tags=_strings(tag), build_args=_strings(build_arg),
                         no_cache=no_cache or None, progress=progress, push=False, prefix=prefix)
    _check_tags(p, settings, goal, _strings(tag), "build-stage")
    return _run_build(c, p, settings, goal, echo=echo)


@exits
def assemble(c: Context, stage: str | None = None, tag: list[str] | None = None, progress: str | None = None, *,
             dockerfile: str | Path = "Dockerfile", context: str | Path = ".", key: str = "compimg",
             base: str | Path | None = None, prefix: str | None = None, echo: bool = False) -> str:
    """Build the final (or named) stage from its prerequisites' existing images."""
    p = _bound_project(locals())
    goal = p.stage(stage, flag="--stage").name if stage else p.graph.final.name
    tags = _strings(tag)
    outside = [t for t in tags if "=" in t and p.stage(t.partition("=")[0], flag=f"--tag {t}").name != goal]
    if outside:
        raise UserError(f"--tag {outside[0]}: assemble builds only '{goal}'; write --tag REF, "
                        f"or `{_prefix(key, prefix)}assemble --stage {outside[0].partition('=')[0]}`")
    settings = _settings(c, key, p, target=goal, tags=tags, prefix=prefix, progress=progress)
    if _dry(c):
        print(f"would assemble {goal} from the images of {', '.join(p.graph.stage(goal).depends_on) or 'no stage'}"
              + (f"; tag it as {', '.join(settings.tags[goal])}" if settings.tags.get(goal) else ""))
        return ""
    from ..progress import make_reporter
    from ..run import BuildRun

    reporter = make_reporter(settings.progress)
    session = BuildRun(p, settings, reporter)
    try:
        result = session.build_stage(p.graph.stage(goal))
        session.summary(None)
        if echo:
            reporter.result(result.image_id)
        return result.image_id
    finally:
        reporter.close()
        session.close()


@exits
def extract_artifact(c: Context, artifact: str, dest: str = ".", progress: str | None = None, *,
                     dockerfile: str | Path = "Dockerfile",
                     context: str | Path = ".", key: str = "compimg", base: str | Path | None = None,
                     prefix: str | None = None) -> list[str]:
    """Copy STAGE:/PATH out of a stage's image onto the host (like `docker cp`)."""
    p = _bound_project(locals())
    _positional(artifact, "STAGE:/PATH", "extract-artifact", _prefix(key, prefix))
    stage_name, colon, path = artifact.partition(":")
    if not colon or not path.startswith("/"):
        raise UserError(f"'{artifact}': write STAGE:/ABSOLUTE/PATH, e.g. build:/go/bin/app")
    goal = p.stage(stage_name, flag="extract-artifact").name
    settings = _settings(c, key, p, target=goal, prefix=prefix, progress=progress)
    if _dry(c):
        print(f"would build {goal} and copy {path} into {dest}")
        return []
    from ..host.artifacts import copy_out
    from ..progress import make_reporter
    from ..run import BuildRun

    reporter = make_reporter(settings.progress)
    session = BuildRun(p, settings, reporter)
    try:
        image_id = session.build([goal])[goal]
        result = copy_out(session.engine, p, goal, image_id, path, dest, reporter, shell_task=settings.task("shell"))
        reporter.note(f"extracted {artifact} -> {', '.join(str(Path(dest) / n) for n in result.names)}"
                      f" ({result.files} {'entry' if result.files == 1 else 'entries'})")
        for skipped in result.skipped:
            reporter.warning(f"skipped special file {skipped} (devices and FIFOs are never extracted)")
    finally:
        reporter.close()
        session.close()
    return result.names


@exits
def shell(c: Context, stage: str, cmd: str = "sh", progress: str | None = None, *,
          dockerfile: str | Path = "Dockerfile", context: str | Path = ".", key: str = "compimg",
          base: str | Path | None = None, prefix: str | None = None) -> None:
    """Open a shell (or run --cmd) in a stage's image, for debugging that stage."""
    p = _bound_project(locals())
    _positional(stage, "a STAGE", "shell", _prefix(key, prefix))
    goal = p.stage(stage).name
    settings = _settings(c, key, p, target=goal, prefix=prefix, progress=progress)
    if _dry(c):
        print(f"would build {goal} and run `{cmd}` in it")
        return
    from ..engine import containers
    from ..host import terminal
    from ..progress import make_reporter
    from ..run import BuildRun

    reporter = make_reporter(settings.progress)
    session = BuildRun(p, settings, reporter)
    try:
        image_id = session.build([goal])[goal]
    except BaseException:
        session.close()
        raise
    finally:
        reporter.close()
    with session:
        containers.reap_leftovers(session.engine, p.slug)
        status = terminal.run_shell(session.engine, image_id, command_words(cmd), p.slug)
    if status:
        raise UserError(f"`{cmd}` in stage '{goal}' exited with status {status}", code=status)


def command_words(cmd: str) -> list[str]:
    """`--cmd` as `docker run IMAGE ...` would take it from a shell: plain words run as they
    are (an image without a shell works), and shell syntax (`;`, `&&`, `|`, `$`, `exit 3`)
    runs through `sh -c`."""
    import shlex

    words = shlex.split(cmd)
    if re.search(r"[;&|<>$`(){}*?~]", cmd) or (words and words[0] in ("exit", "cd", "export", "set", ".")):
        return ["sh", "-c", cmd]
    return words


@exits
def clean(c: Context, *, dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
          key: str = "compimg", base: str | Path | None = None, prefix: str | None = None) -> None:
    """Remove the images and temporary containers this project's builds made, nothing else."""
    import io

    p = _bound_project(locals())
    if _dry(c):
        print(f"would remove the images of {p.repository} and this project's temporary containers")
        return
    from ..engine.client import Engine
    from ..host.artifacts import clean as clean_project

    quiet = _settings(c, key, p, target=p.graph.final.name).progress == "quiet"
    clean_project(p, Engine(), io.StringIO() if quiet else sys.stdout)


OPERATIONS: dict[str, Callable[..., Any]] = {
    "parse": parse, "build": build, "build-stage": build_stage, "extract-artifact": extract_artifact,
    "assemble": assemble, "shell": shell, "clean": clean,
}
HELP: dict[str, dict[str, str]] = {
    "parse": {"format": f"one of {', '.join(FORMATS)} (default text)",
              "stage": "stage to show with --lowered (default: final)",
              "lowered": "print the single-stage Dockerfile the classic builder is sent for --stage"},
    "build": {"target": "stage to build (default: the final stage); only what it needs is built",
              "tag": "REF for the target, or STAGE=REF (the seed's --tag=STAGE=REF); repeatable",
              "build-arg": "KEY=VALUE, or KEY to take it from the environment; repeatable",
              "no-cache": "rebuild everything: no engine cache, no reuse of unchanged stages",
              "push": "push the target's tags afterwards",
              "push-all": "with --push, push the tags of the other stages built too",
              "jobs": "stages built at the same time with the classic builder (default 4)",
              "builder": "auto (default), buildkit or classic",
              "progress": "auto (default), plain, tty or quiet",
              "pull": "pull external base images even when they are present",
              "cache-from": "REF of an image to use as a cache source; repeatable",
              "cache-to": "'inline': embed cache metadata in the built images (for --cache-from)",
              "network": "network of RUN steps: default, none or host (BuildKit); any network (classic)"},
    "build-stage": {"stage": "the stage to build", "tag": "REF to tag the stage with; repeatable",
                    "build-arg": "KEY=VALUE build argument; repeatable",
                    "no-cache": "do not use the engine's cache", "progress": "auto, plain, tty or quiet"},
    "extract-artifact": {"artifact": "STAGE:/PATH to copy out (a file or a directory)",
                         "dest": "folder to copy into (default: current folder)",
                         "progress": "auto, plain, tty or quiet"},
    "assemble": {"stage": "stage to assemble (default: the final stage)", "tag": "REF to tag it with",
                 "progress": "auto, plain, tty or quiet"},
    "shell": {"stage": "stage whose image to open",
              "cmd": "command to run instead of `sh` (shell syntax runs through sh -c)",
              "progress": "auto, plain, tty or quiet (the build before the shell)"},
    "clean": {},
}
ITERABLE = {"build": ["tag", "build_arg", "cache_from"], "build-stage": ["tag", "build_arg"],
            "assemble": ["tag"]}


def _bind(operation: Callable[..., Any], name: str, bound: dict[str, Any], **task_options: Any) -> CompimgTask:
    """The task `name` running `operation` with the collection's keyword-only arguments."""
    def body(c: Context, *args: Any, **kwargs: Any) -> Any:
        return operation(c, *args, **kwargs, **bound)

    body.__signature__ = inspect.signature(operation)  # type: ignore[attr-defined]
    body.__doc__ = operation.__doc__
    return CompimgTask(body, name=name, help=dict(HELP.get(name, {})),
                       iterable=ITERABLE.get(name, []), **task_options)


def collection(dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
               name: str = "compimg", *, base: str | Path | None = None, report: bool | None = None,
               prefix: str | None = None, stages: bool = True) -> Collection:
    """The tasks for `dockerfile`, built in `context`.

    Relative paths are taken from `base`, by default the folder your tasks were found in
    (that of the calling `tasks.py`, or the one holding the `tasks/` package), so `invoke`
    works from any subfolder. The file is parsed now. A broken file does not break your
    other tasks: the collection then has no per-stage tasks and its tasks report the error
    when run. `report`: also print that error as one line on stderr now (default: only when
    the command line lists tasks, `--list` or `--help`). `prefix`: what hints put before a
    task's name (default `NAME.`). `stages=False` leaves out the per-stage tasks (the
    `compimg` command, when its command line runs none of them: Invoke's parser pays for
    every task it knows, about 0.2 ms each)."""
    root = Path(base) if base is not None else _caller_folder(1)
    paths = ((root / dockerfile).resolve(), (root / context).resolve())
    bound = {"dockerfile": paths[0], "context": paths[1], "key": name, "base": None, "prefix": _prefix(name, prefix)}
    try:
        p: Project | None = _project(*paths)
    except KeyboardInterrupt:
        raise as_exit(Interrupted()) from None
    except UserError as exc:
        p = None
        if report if report is not None else lists_tasks(sys.argv[1:]):
            print(f"{exc} (the {name} tasks report this when run)", file=sys.stderr)
    return _collection(p if stages else None, name, bound)


def lists_tasks(argv: list[str]) -> bool:
    """Does this command line list tasks (`--list`, `-l`, `--help`, `-h`, bare or with a
    value)? Then a broken Dockerfile is worth a line now; for any other task it is not."""
    return any(re.fullmatch(r"--(list|help)(=.*)?|-[lh]\S*", word) for word in argv)


def make_collection(p: Project, name: str = "compimg", *, prefix: str | None = None) -> Collection:
    """The tasks of an already parsed project."""
    paths = (p.dockerfile.resolve(), p.context.resolve())
    bound = {"dockerfile": paths[0], "context": paths[1], "key": name, "base": None, "prefix": _prefix(name, prefix)}
    _projects[paths] = p
    return _collection(p, name, bound)


def _collection(p: Project | None, name: str, bound: dict[str, Any]) -> Collection:
    ns = Collection(name)
    ns.configure({name: dict(CONFIG_DEFAULTS)})
    for task_name, operation in OPERATIONS.items():
        # Tasks print what they show (the image ID when quiet); the API functions stay quiet.
        extra = {"echo": True} if operation in (parse, build, build_stage, assemble) else {}
        ns.add_task(_bind(operation, task_name, {**bound, **extra}), default=task_name == "build")
    if p is not None:
        ns.add_collection(_stage_collection(p, name, bound["prefix"]))
    return ns


def _stage_collection(p: Project, key: str, prefix: str) -> Collection:
    """`stage.<name>`: one task per stage whose pre-tasks are exactly the stages it uses.
    The graph is already checked (no cycles: stages only look backwards)."""
    from ..dockerfile.render import base_label

    stages = Collection("stage")
    tasks: dict[str, CompimgTask] = {}
    for stage in p.graph.stages:
        body = _stage_body(p, key, stage.name, prefix)
        body.__doc__ = f"Build stage '{stage.name}' (line {stage.line}, FROM {base_label(stage)})."
        tasks[stage.name] = CompimgTask(body, name=stage.task_name,
                                        pre=[tasks[d] for d in stage.depends_on])  # type: ignore[misc]
        stages.add_task(tasks[stage.name])
    return stages


def _stage_body(p: Project, key: str, stage_name: str, prefix: str) -> Callable[[Context], str]:
    @exits
    def body(c: Context) -> str:
        settings = _settings(c, key, p, target=stage_name, prefix=prefix)
        if _dry(c):
            print(f"would build stage {stage_name} from the images of its prerequisites")
            return ""
        from ..progress import make_reporter
        from ..run import BuildRun

        reporter = make_reporter(settings.progress)
        try:
            with BuildRun(p, settings, reporter) as run:
                result = run.build_stage(p.graph.stage(stage_name))
            reporter.note(f"{result.outcome} {short_id(result.image_id)} ({result.size / 1e6:.1f} MB) "
                          f"as {p.local_ref(stage_name)}", stage_name)
        finally:
            reporter.close()
        return result.image_id

    return body
