"""Invoke glue: a `Collection` of tasks made from one compilation-image Dockerfile.

The operations below *are* the Python API and the task bodies (after pyinvoke's
invocations: the task is the function; see `operation`). Each takes the context, the
`Binding` (the Dockerfile, context, config key) and its flags. Settings are resolved in
`settings.resolve`: flags, then config under the collection's key, then defaults.
Pre-tasks get no flags, so they read config only.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from collections.abc import Collection as Collection_  # (Invoke's Collection is the one named Collection here)
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Collection, Context

from ..building.project import Project
from ..building.settings import CONFIG_DEFAULTS, Settings, configured
from ..dockerfile.render import FORMATS
from ..errors import Interrupted, UserError
from ..names import short_id
from . import build_flags
from .binding import Binding, caller_folder, project_at, remember, strings, task_prefix
from .build_flags import PLATFORM_HELP, BuildFlags
from .exits import as_exit, task_exits
from .operation import DEFAULT_TASK, OPERATIONS, CompimgTask, operation

if TYPE_CHECKING:
    from ..progress import Reporter
    from ..run import BuildRun

# The engine modules (and so the Docker SDK) are imported by the operations that talk to
# the engine, when they run: a tasks.py that adds our collection keeps `invoke --list` and
# the user's other tasks quick.

IIDFILE_HELP = "write the image ID to this file (docker build --iidfile), once the build succeeded"
METADATA_HELP = "write a JSON of what was built, per stage (buildx's --metadata-file), once the build succeeded"


def project(dockerfile: str | Path = "Dockerfile", context: str | Path = ".", *,
            base: str | Path | None = None) -> Project:
    """The parsed project for `dockerfile` (one per path in this process). Relative paths
    are taken from `base`, by default the folder of the calling module (your tasks.py)."""
    root = Path(base) if base is not None else caller_folder(sys._getframe(1))
    return project_at((root / dockerfile).resolve(), (root / context).resolve())


@contextlib.contextmanager
def build_run(p: Project, settings: Settings) -> Iterator[tuple[BuildRun, Reporter]]:
    """A build of `p` reporting to a reporter for `settings.progress`, closed afterwards
    (also on errors and Ctrl-C: the live view gives the terminal back)."""
    from ..progress import make_reporter
    from ..run import BuildRun

    to_stdout = settings.output is not None and settings.output.dest == "-"  # a tar on stdout: progress on stderr
    reporter = make_reporter(settings.progress, out=sys.stderr if to_stdout else None)
    try:
        for warning in settings.warnings:
            reporter.warning(warning)
        with BuildRun(p, settings, reporter) as run:  # closing it ends its BuildKit sessions and connections
            yield run, reporter
    finally:
        reporter.close()


def _positional(value: str, what: str, task: str, bound: Binding) -> None:
    """Invoke fills a missing positional argument with the next word, even `--help`."""
    if value.startswith("-"):
        raise UserError(f"{task} needs {what} first, got '{value}'; for help on it run "
                        f"`{bound.help_command(task)}`")


def _dry(c: Context) -> bool:
    return bool(c.config.get("run", {}).get("dry"))


# --- operations: the tasks' bodies and the Python API -------------------------------------

@operation("parse", help={
    "format": f"one of {', '.join(FORMATS)} (default text)",
    "stage": "stage to show with --lowered (default: final)",
    "lowered": "print the Dockerfile the engine is sent to build --stage",
    "builder": "with --lowered: whose lowering, classic, buildkit or auto (default: the one a build would use, "
               "which asks the engine)"})
def parse(c: Context, bound: Binding, format: str = "text", stage: str | None = None, lowered: bool = False,
          builder: str | None = None) -> str:
    """Show the stage graph (text, json, dot, mermaid, native) or a lowered stage."""
    p = bound.project
    task = bound.task("parse")
    if stage and not lowered:
        raise UserError(f"--stage goes with --lowered: write `{task} --lowered --stage {stage}`")
    if builder and not lowered:
        raise UserError(f"--builder goes with --lowered: write `{task} --lowered --builder {builder}`")
    if lowered and format != "text":
        raise UserError(f"--format {format} and --lowered are two different views: write "
                        f"`{task} --format {format}` or `{task} --lowered`")
    settings = bound.settings(c, target=p.graph.final.name, builder=builder)
    if lowered:
        goal = p.stage(stage, flag="--stage").name if stage else p.graph.final.name
        text, what = _lowered(p, goal, settings.builder)
        print(what, file=sys.stderr)  # on stderr: stdout is exactly the file sent
    elif format in FORMATS:
        text = FORMATS[format](p.graph)
    else:
        raise UserError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    # The task prints what it shows; from the Python API it is returned, and printed too
    # unless progress is quiet.
    if bound.as_task or settings.progress != "quiet":
        print(text, end="")
    return text


def _lowered(p: Project, goal: str, builder: str) -> tuple[str, str]:
    """The Dockerfile a build of `goal` sends with `builder`, and one line saying whose it is."""
    from ..dockerfile import lowering

    if builder == "auto":  # the one choice a build makes (builders.choose): only this needs the engine
        from ..builders import choose
        from ..engine.client import Engine

        with Engine() as engine:
            builder = choose("auto", engine, p.graph).name
        how = f"# {builder}: the builder this engine and file get with --builder auto"
    else:
        how = f"# {builder}: --builder {builder}"
    if builder == "classic":
        from ..dockerfile.model import buildkit_only

        refused = next(((i.line, need) for s in p.graph.needs(goal) for i in s.instructions
                        if (need := buildkit_only(i))), None)
        return (lowering.per_stage(p.graph, goal).text,
                f"{how}; stage '{goal}' alone, each {{{{stage:NAME}}}} is replaced by that stage's image ID"
                + (f"; the classic builder refuses {refused[1]} (line {refused[0]}): build with --builder buildkit"
                   if refused else ""))
    return (lowering.multi_stage(p.graph, p.graph.needs(goal), context_prefix=lowering.CONTEXT_PREFIX).text,
            f"{how}; one multi-stage file for '{goal}', the context sent under {lowering.CONTEXT_PREFIX}")


@operation("build", builds=True, repeatable=("tag",), help={
    "target": "stage to build (default: the final stage); only what it needs is built",
    "tag": "REF for the target, or STAGE=REF (the seed's --tag=STAGE=REF); repeatable",
    "push": "push the target's tags afterwards",
    "push-all": "with --push, push the tags of the other stages built too",
    "output": "DIR, type=local,dest=DIR or type=tar,dest=FILE: write the target's files there instead of "
              "making its image (BuildKit)",
    "platform": PLATFORM_HELP + "; several need -o",
    "iidfile": IIDFILE_HELP, "metadata-file": METADATA_HELP})
def build(c: Context, bound: Binding, target: str | None = None, tag: list[str] | None = None, push: bool = False,
          push_all: bool = False, output: str | None = None, iidfile: str | None = None,
          metadata_file: str | None = None, *, build_flags: BuildFlags) -> dict[str, str]:
    """Build the final stage (or --target) and every stage it needs, nothing else."""
    p = bound.project
    target = target or configured(c.config.get(bound.key), "target", bound.env_prefix(c))
    goal = p.stage(target, flag="--target").name if target else p.graph.final.name
    # A bool flag that is not given (False) leaves the decision to config.
    settings = bound.settings(c, target=goal, tags=tag, push=push or None, output=output, **build_flags.settings())
    _check_tags(p, settings, goal, strings(tag), "build --target")
    return _run_build(c, bound, settings, goal, push_all=push_all, files=(iidfile, metadata_file))


def _check_tags(p: Project, settings: Settings, goal: str, flags: list[str], how: str) -> None:
    """A `--tag STAGE=REF` for a stage this build does not build would be a silent no-op.
    (Config tags name every stage a project has: those of stages not built are left.)"""
    from ..building.settings import parse_tags

    needed = {s.name for s in p.graph.needs(goal)}
    outside = sorted(set(parse_tags(flags, goal, p.graph)) - needed)
    if outside:
        raise UserError(f"--tag for stage(s) {', '.join(outside)}, which building '{goal}' does not build; "
                        f"run `{settings.task(how)} {outside[0]}`, or drop that tag")


def _run_build(c: Context, bound: Binding, settings: Settings, goal: str, *, push_all: bool = False,
               files: tuple[str | None, str | None] = (None, None)) -> dict[str, str]:
    p = bound.project
    _check_files(*files)
    needed = [s.name for s in p.graph.needs(goal)]
    if _dry(c):
        tags = {s: r for s, r in settings.tags.items() if s in needed}
        for warning in settings.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"would build {goal} ({', '.join(needed)}) from {p.dockerfile}"
              + "".join(f"; tag {s} as {', '.join(r)}" for s, r in tags.items())
              + "".join(f"; build arg {k}={v}" for k, v in settings.build_args.items())
              + ("; no cache" if settings.no_cache else "") + ("; push" if settings.push else ""))
        return {}
    from ..building import push as pushing

    with build_run(p, settings) as (run, reporter):
        ids = run.build([goal])
        run.summary(goal if goal == p.graph.final.name else None)
        if settings.push and run.builder.stores_images:  # a BuildKit service pushed as it built
            # Every tag this push leaves out (another stage's, one this build did not make)
            # is one line: never silently dropped, never pushed from an older image.
            refs = pushing.plan(settings.tags, ids, goal, push_all, skipped=reporter.warning)
            if not refs:
                reporter.warning(f"--push: no tag for '{goal}' to push; add --tag REF")
            pushing.push(run.engine, refs, reporter, layers=reporter.live)
        _write_results(files, ids[goal], run, settings, p)
        if bound.as_task and ids[goal]:  # the task prints the ID when quiet (`docker build -q`); the API returns it
            reporter.result(ids[goal])
        return ids


def _check_files(iidfile: str | None, metadata_file: str | None) -> None:
    from .results import check_writable

    check_writable("--iidfile", iidfile)
    check_writable("--metadata-file", metadata_file)


def _write_results(files: tuple[str | None, str | None], image_id: str, run: BuildRun, settings: Settings,
                   p: Project) -> None:
    if any(files):
        from .results import write

        names = {row.stage: [*settings.tags.get(row.stage, ()), p.local_ref(row.stage)] for row in run.rows()}
        write(*files, image_id, run.rows(), names)


@operation("build-stage", builds=True, repeatable=("tag",), help={
    "stage": "the stage to build", "tag": "REF to tag the stage with; repeatable",
    "iidfile": IIDFILE_HELP, "metadata-file": METADATA_HELP})
def build_stage(c: Context, bound: Binding, stage: str, tag: list[str] | None = None, iidfile: str | None = None,
                metadata_file: str | None = None, *, build_flags: BuildFlags) -> dict[str, str]:
    """Build one stage and only the stages it needs (for debugging)."""
    p = bound.project
    _positional(stage, "a STAGE", "build-stage", bound)
    goal = p.stage(stage).name
    settings = bound.settings(c, target=goal, tags=tag, push=False, **build_flags.settings())
    _check_tags(p, settings, goal, strings(tag), "build-stage")
    return _run_build(c, bound, settings, goal, files=(iidfile, metadata_file))


@operation("assemble", builds=True, repeatable=("tag",), help={
    "stage": "stage to assemble (default: the final stage)", "tag": "REF to tag it with",
    "iidfile": IIDFILE_HELP, "metadata-file": METADATA_HELP})
def assemble(c: Context, bound: Binding, stage: str | None = None, tag: list[str] | None = None,
             iidfile: str | None = None, metadata_file: str | None = None, *, build_flags: BuildFlags) -> str:
    """Build the final (or named) stage from its prerequisites' existing images."""
    p = bound.project
    goal = p.stage(stage, flag="--stage").name if stage else p.graph.final.name
    tags = strings(tag)
    outside = [t for t in tags if "=" in t and p.stage(t.partition("=")[0], flag=f"--tag {t}").name != goal]
    if outside:
        raise UserError(f"--tag {outside[0]}: assemble builds only '{goal}'; write --tag REF, "
                        f"or `{bound.task('assemble')} --stage {outside[0].partition('=')[0]}`")
    settings = bound.settings(c, target=goal, tags=tags, **build_flags.settings())
    _check_files(iidfile, metadata_file)
    if _dry(c):
        print(f"would assemble {goal} from the images of {', '.join(p.graph.stage(goal).depends_on) or 'no stage'}"
              + (f"; tag it as {', '.join(settings.tags[goal])}" if settings.tags.get(goal) else ""))
        return ""
    with build_run(p, settings) as (run, reporter):
        result = run.build_stage(p.graph.stage(goal))
        run.summary(None)
        _write_results((iidfile, metadata_file), result.image_id, run, settings, p)
        if bound.as_task:
            reporter.result(result.image_id)
        return result.image_id


@operation("extract-artifact", builds=True, help={
    "artifact": "STAGE:/PATH to copy out (a file or a directory)",
    "dest": "folder to copy into (default: current folder)"})
def extract_artifact(c: Context, bound: Binding, artifact: str, dest: str = ".", *,
                     build_flags: BuildFlags) -> list[str]:
    """Copy STAGE:/PATH out of a stage's image onto the host (like `docker cp`)."""
    p = bound.project
    _positional(artifact, "STAGE:/PATH", "extract-artifact", bound)
    stage_name, colon, path = artifact.partition(":")
    if not colon or not path.startswith("/"):
        raise UserError(f"'{artifact}': write STAGE:/ABSOLUTE/PATH, e.g. build:/go/bin/app")
    goal = p.stage(stage_name, flag="extract-artifact").name
    settings = bound.settings(c, target=goal, **build_flags.settings())
    if _dry(c):
        print(f"would build {goal} and copy {path} into {dest}")
        return []
    with build_run(p, settings) as (run, reporter):
        image_id = run.build([goal])[goal]
        result = run.extract(goal, image_id, path, dest)
        reporter.note(f"extracted {artifact} -> {', '.join(str(Path(dest) / n) for n in result.names)}"
                      f" ({result.files} {'entry' if result.files == 1 else 'entries'})")
        for skipped in result.skipped:
            reporter.warning(f"skipped special file {skipped} (devices and FIFOs are never extracted)")
    return result.names


@operation("shell", builds=True, help={
    "stage": "stage whose image to open",
    "cmd": "command to run instead of `sh` (shell syntax runs through sh -c)",
    "progress": "auto, plain, tty or quiet (the build before the shell)",
    "quiet": "--progress quiet for the build before the shell"})
def shell(c: Context, bound: Binding, stage: str, cmd: str = "sh", *, build_flags: BuildFlags) -> None:
    """Open a shell (or run --cmd) in a stage's image, for debugging that stage."""
    p = bound.project
    _positional(stage, "a STAGE", "shell", bound)
    goal = p.stage(stage).name
    settings = bound.settings(c, target=goal, **build_flags.settings())
    if _dry(c):
        print(f"would build {goal} and run `{cmd}` in it")
        return
    from ..engine import containers
    from ..host import terminal

    with build_run(p, settings) as (run, _):
        image_id = run.build([goal])[goal]
    containers.reap_leftovers(run.engine, p.slug)
    status = terminal.run_shell(run.engine, image_id, command_words(cmd), p.slug)
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


@operation("clean", help={"all": "clean every compimg project on the engine (repositories compimg/*), "
                                 "and temporary containers of runs that are gone"})
def clean(c: Context, bound: Binding, all: bool = False) -> None:
    """Remove the images and temporary containers this project's builds made, nothing else."""
    import io

    from ..building.project import project_slug

    # From the paths alone: the images of a Dockerfile that is gone or broken can be cleaned.
    repository = "compimg/*" if all else f"compimg/{project_slug(bound.dockerfile, bound.context)}"
    if _dry(c):
        print(f"would remove the images of {repository} and " + ("the temporary containers of runs that are gone"
                                                               if all else "this project's temporary containers"))
        return
    from ..engine.client import Engine
    from ..host import artifacts

    progress = configured(c.config.get(bound.key), "progress", bound.env_prefix(c))
    out = io.StringIO() if str(progress).strip().lower() == "quiet" else sys.stdout
    with Engine() as engine:
        if all:
            artifacts.clean_all(engine, out)
        else:
            artifacts.clean(project_slug(bound.dockerfile, bound.context), engine, out)


# --- the collection -----------------------------------------------------------------------

def collection(dockerfile: str | Path = "Dockerfile", context: str | Path = ".",
               name: str = "compimg", *, base: str | Path | None = None, report: bool | None = None,
               prefix: str | None = None, stages: bool = True,
               operations: Collection_[str] | None = None) -> Collection:
    """The tasks for `dockerfile`, built in `context`.

    Relative paths are taken from `base`, by default the folder your tasks were found in
    (that of the calling `tasks.py`, or the one holding the `tasks/` package), so `invoke`
    works from any subfolder. The file is parsed now. A broken file does not break your
    other tasks: the collection then has no per-stage tasks and its tasks report the error
    when run. `report`: also print that error as one line on stderr now (default: only when
    the command line lists tasks, `--list` or `--help`). `prefix`: what hints put before a
    task's name (default `NAME.`). `stages=False` leaves out the per-stage tasks (the
    `compimg` command, when its command line runs none of them: Invoke's parser pays for
    every task it knows, about 0.2 ms each). `operations`: only these of the operations
    (default: all; the `compimg` command leaves out those its command line does not name,
    for the same reason: about 1 ms each)."""
    root = Path(base) if base is not None else caller_folder(sys._getframe(1))
    bound = Binding.of(dockerfile, context, name, root=root, prefix=prefix, as_task=True)
    try:
        p: Project | None = bound.project
    except KeyboardInterrupt:
        raise as_exit(Interrupted()) from None
    except UserError as exc:
        p = None
        if report if report is not None else lists_tasks(sys.argv[1:]):
            print(f"{exc} (the {name} tasks report this when run)", file=sys.stderr)
    return _collection(p if stages else None, bound, operations)


def lists_tasks(argv: list[str]) -> bool:
    """Does this command line list tasks (`--list`, `-l`, `--help`, `-h`, bare or with a
    value)? Then a broken Dockerfile is worth a line now; for any other task it is not."""
    return any(re.fullmatch(r"--(list|help)(=.*)?|-[lh]\S*", word) for word in argv)


def make_collection(p: Project, name: str = "compimg", *, prefix: str | None = None) -> Collection:
    """The tasks of an already parsed project."""
    remember(p)
    bound = Binding(p.dockerfile.resolve(), p.context.resolve(), name, task_prefix(name, prefix), as_task=True)
    return _collection(p, bound)


def _collection(p: Project | None, bound: Binding, operations: Collection_[str] | None = None) -> Collection:
    ns = Collection(bound.key)
    ns.configure({bound.key: dict(CONFIG_DEFAULTS)})
    for task_name, op in OPERATIONS.items():
        if operations is None or task_name in operations:
            ns.add_task(op.task(bound), default=task_name == DEFAULT_TASK)
    if p is not None:
        ns.add_collection(_stage_collection(p, bound))
    return ns


def _stage_collection(p: Project, bound: Binding) -> Collection:
    """`stage.<name>`: one task per stage whose pre-tasks are exactly the stages it uses.
    The graph is already checked (no cycles: stages only look backwards)."""
    from ..dockerfile.render import base_label

    stages = Collection("stage")
    tasks: dict[str, CompimgTask] = {}
    for stage in p.graph.stages:
        body = _stage_body(p, bound, stage.name)
        body.__doc__ = f"Build stage '{stage.name}' (line {stage.line}, FROM {base_label(stage)})."
        tasks[stage.name] = CompimgTask(body, name=stage.task_name, help=STAGE_TASK_HELP,
                                        pre=[tasks[d] for d in stage.depends_on])  # type: ignore[misc]
        stages.add_task(tasks[stage.name])
    return stages


# A stage task takes how its build is shown, as every task that builds does, and no build
# setting: its pre-tasks, which Invoke runs with no flags, would then differ from it.
STAGE_TASK_HELP = {name: help for name, help in build_flags.helps().items() if name in build_flags.OUTPUT_FLAGS}


def _stage_body(p: Project, bound: Binding, stage_name: str) -> Callable[..., str]:
    @task_exits
    def body(c: Context, progress: str | None = None, quiet: bool = False) -> str:
        settings = bound.settings(c, target=stage_name, progress=build_flags.chosen_progress(progress, quiet))
        if _dry(c):
            print(f"would build stage {stage_name} from the images of its prerequisites")
            return ""
        with build_run(p, settings) as (run, reporter):
            result = run.build_stage(p.graph.stage(stage_name))
            reporter.note(f"{result.outcome} {short_id(result.image_id)} ({result.size / 1e6:.1f} MB) "
                          f"as {p.local_ref(stage_name)}", stage_name)
            reporter.result(result.image_id)  # quiet: the ID alone, as every task that builds prints it
        return result.image_id

    return body
