"""Issue 12: the plugin fits the habits of Docker and Invoke users. Each test drives a real
`invoke` or `compimg` process in a project folder, as a user would. Tests without the
engine marker point DOCKER_HOST at nothing: they must not need an engine."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMPIMG, ROOT, cli
from invoke import Config, Context

import invoke_compimg

EXAMPLE = ROOT / "examples/app-with-tasks"
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent"}

# The example's tasks.py, with the host-side tasks made to run anywhere (no Go on the host).
TASKS = (EXAMPLE / "tasks.py").read_text().replace(
    'c.run("go test ./...")', 'print("TEST-RAN")').replace('c.run("go vet ./...")', 'print("LINT-RAN")')
API_TASKS = """
@task
def api(c):
    \"\"\"The Python API from a task body.\"\"\"
    text = invoke_compimg.parse(c, format="json")
    print("API-PARSED", len(text))
    invoke_compimg.build(c, target="unit_tests")


ns.add_task(api)
"""


def example(folder: Path, tasks: str = TASKS) -> Path:
    """A copy of examples/app-with-tasks in `folder`."""
    shutil.copytree(EXAMPLE, folder, dirs_exist_ok=True)
    (folder / "tasks.py").write_text(tasks)
    return folder


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed run (and that it failed cleanly)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- 1. a broken Dockerfile does not break the user's other tasks ----------------------------

@pytest.mark.parametrize("breakage", ["FROMM", "missing"])
def test_a_broken_dockerfile_leaves_the_users_tasks_alone(tmp_path: Path, breakage: str) -> None:
    project = example(tmp_path / "app")
    good = (project / "Dockerfile").read_text()
    if breakage == "FROMM":
        (project / "Dockerfile").write_text(good.replace("FROM busybox", "FROMM busybox"))
        error = f"{project}/Dockerfile:13: unknown instruction FROMM; did you mean FROM?"
    else:
        (project / "Dockerfile").unlink()
        error = (f"{project}/Dockerfile: no such file; give the Dockerfile's path (in tasks.py: "
                 f"collection('path/to/Dockerfile'); compimg: -f PATH) (cwd is {project})")

    listing = cli("invoke", ["--list"], project, NO_ENGINE)
    assert listing.returncode == 0
    assert listing.stderr.strip().splitlines() == [f"{error} (the compimg tasks report this when run)"]
    for name in ("test", "lint", "release", "docs.changelog", "compimg.build (compimg)", "compimg.shell"):
        assert name in listing.stdout
    assert "compimg.stage." not in listing.stdout
    for task, marker in (["test"], "TEST-RAN"), (["lint"], "LINT-RAN"), (["docs.changelog"], "first release"):
        ran = cli("invoke", task, project, NO_ENGINE)
        assert ran.returncode == 0 and marker in ran.stdout and ran.stderr == "", ran.stderr
    for task in (["compimg.build"], ["compimg.parse"], ["compimg.shell", "run"], ["release"], ["check"]):
        assert one_line(cli("invoke", task, project, NO_ENGINE)) == error
    assert one_line(cli("compimg", ["parse"], project, NO_ENGINE)) == error

    (project / "Dockerfile").write_text(good)  # fixed: everything is back, tasks.py unchanged
    listing = cli("invoke", ["--list"], project, NO_ENGINE)
    assert listing.returncode == 0 and listing.stderr == ""
    assert "compimg.stage.unit-tests" in listing.stdout


# --- 2. Docker's flags ----------------------------------------------------------------------

def test_t_is_tag_on_every_task_that_tags_and_h_stays_help(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    for task in ("build", "build-stage", "assemble"):
        helped = cli("invoke", ["--help", f"compimg.{task}"], project, NO_ENGINE)
        assert re.search(r"^\s+-t, --tag\s", helped.stdout, re.M), helped.stdout
        assert not re.search(r"-t STRING, --target", helped.stdout)
        assert not re.search(r"-h \S*,? ?--", helped.stdout)  # no option took -h
        if task != "build-stage":  # its STAGE comes first: Invoke would take -h for it
            short = cli("invoke", [f"compimg.{task}", "-h"], project, NO_ENGINE)
            assert short.returncode == 0 and short.stdout == helped.stdout
    built = cli("invoke", ["--dry", "compimg.build", "-t", "my-app:2", "-t", "build=my-build"], project, NO_ENGINE)
    assert "tag build as my-app-build, my-build" not in built.stdout  # a flag replaces the config tags
    assert "tag build as my-build; tag run as my-app:2" in built.stdout, built.stderr
    staged = cli("invoke", ["--dry", "compimg.build-stage", "build", "-t", "b:1"], project, NO_ENGINE)
    assert "would build build (build) " in staged.stdout and "tag build as b:1" in staged.stdout
    assembled = cli("invoke", ["--dry", "compimg.assemble", "-t", "r:1"], project, NO_ENGINE)
    assert "would assemble run from the images of build; tag it as r:1" in assembled.stdout


def test_compimg_help_shows_only_what_does_something(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    helped = cli("compimg", ["--help"], project, NO_ENGINE)
    assert helped.returncode == 0
    options = helped.stdout.split("Available tasks")[0]
    assert "-f STRING, --file=STRING" in options and "--context" in options
    for hidden in ("--sudo", "-R", "-p", "-w", "--config", "--echo", "--prompt-for-sudo-password"):
        assert not re.search(rf"(^|[ ,]){re.escape(hidden)}\b", options), hidden
    assert "stage.unit-tests" in helped.stdout


def test_compimg_finds_the_dockerfile_the_docker_way(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    expected = (f"would build run (build, run) from {project}/Dockerfile; tag build as my-app-build; tag run as app"
                "; build arg GOFLAGS=-trimpath")
    for args in (["--dry", "build", "--tag=run=app", "app"],  # positional context, last
                 ["--dry", "--context", "app", "build", "-t", "app"],  # --context DIR: DIR/Dockerfile
                 ["--dry", "-f", "app/Dockerfile", "build", "--tag", "app"],  # -f: context its folder
                 ["--dry", "--file", "app/Dockerfile", "build", "--tag", "run=app", "app"]):
        result = cli("compimg", args, tmp_path, NO_ENGINE)
        assert result.returncode == 0 and result.stdout.strip() == expected, (args, result.stderr)
    # -f is the Dockerfile here, never Invoke's --config; the folder has its own invoke.yaml
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "Other.Dockerfile").write_text("NAME only\nFROM busybox\n")
    result = cli("compimg", ["-f", str(other / "Other.Dockerfile"), "parse"], tmp_path, NO_ENGINE)
    assert result.stdout.startswith(f"{other}/Other.Dockerfile: 1 stage(s), final: only"), result.stderr


def test_compimg_with_the_default_tasks_flags_and_no_task_name_builds(tmp_path: Path) -> None:
    """Plain `compimg` builds; `compimg -q` said "No idea what '-q' is!". As `docker build -q .`:
    the default task's flags, given without its name, are its."""
    project = example(tmp_path / "app")
    would = (f"would build run (build, run) from {project}/Dockerfile; tag build as my-app-build{{}}; "
             "build arg GOFLAGS=-trimpath{}")
    for args, tags, extra in ((["-q"], "", ""), (["--progress", "plain"], "", ""), (["--progress=quiet"], "", ""),
                              (["-t", "x"], "; tag run as x", ""), (["-q", "-t=x", "."], "; tag run as x", ""),
                              (["--no-cache", "app", "-q"], "", "; no cache"), (["-q", "build"], "", ""),
                              (["app"], "", ""),
                              # a flag's value that is another task's name is still the value
                              (["-t", "shell"], "; tag run as shell", ""),
                              (["-t=clean", "."], "; tag run as clean", "")):
        cwd = tmp_path if "app" in args else project
        built = cli("compimg", ["--dry", *args], cwd, NO_ENGINE)
        assert built.returncode == 0 and built.stdout.strip() == would.format(tags, extra), (args, built.stderr)
    assert one_line(cli("compimg", ["--dry", "-q", "--progress", "tty"], project, NO_ENGINE)) == (
        "--quiet and --progress tty say two things; give one")
    target = cli("compimg", ["--dry", "--target", "build"], project, NO_ENGINE)
    assert target.stdout.startswith("would build build (build) "), target.stderr
    staged = cli("compimg", ["--dry", "-q", "stage.run"], project, NO_ENGINE)  # before a task name: that task's
    assert staged.returncode == 0 and staged.stdout.endswith("would build stage run from the images of its "
                                                             "prerequisites\n"), staged.stderr
    # What the default task does not take stays a mistake; core flags keep their meaning.
    assert one_line(cli("compimg", ["--cmd", "ls"], project, NO_ENGINE)) == "No idea what '--cmd' is!"
    assert one_line(cli("compimg", ["-q", "parse"], project, NO_ENGINE)) == "No idea what '-q' is!"
    # A task name mistyped gets the nearest one (Invoke's line for a word near no task).
    for typed, near in (("biuld", "build"), ("extract-artefact", "extract-artifact"), ("sheel", "shell")):
        mistyped = cli("compimg", [typed, "."], project, NO_ENGINE)
        assert mistyped.returncode == 1 and one_line(mistyped) == (
            f"no task '{typed}'; did you mean '{near}'? (`compimg --list` shows them all)")
    assert one_line(cli("compimg", ["frobnicate"], project, NO_ENGINE)) == "No idea what 'frobnicate' is!"
    helped = cli("compimg", ["--help"], project, NO_ENGINE)
    assert helped.returncode == 0 and "Available tasks" in helped.stdout and "no task: build" in helped.stdout
    version = cli("compimg", ["--version"], project, NO_ENGINE)
    assert version.returncode == 0 and version.stdout.startswith("compimg "), version.stderr


def test_build_arg_without_value_comes_from_the_environment(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    given = cli("invoke", ["--dry", "compimg.build", "--build-arg", "GOFLAGS"], project, {**NO_ENGINE, "GOFLAGS": ""})
    assert given.returncode == 0 and given.stdout.endswith("; build arg GOFLAGS=\n"), given.stderr  # set, even empty
    unset = cli("invoke", ["--dry", "compimg.build", "--build-arg", "GOFLAGS"], project, {**NO_ENGINE, "GOFLAGS": None})
    # As docker build: an arg named but not set in the environment sets nothing (invoke.yaml's
    # value holds); one warning.
    assert unset.returncode == 0 and unset.stdout.endswith("; build arg GOFLAGS=-trimpath\n"), unset.stderr
    assert unset.stderr.splitlines() == ["warning: --build-arg GOFLAGS: GOFLAGS is not set in the environment, so "
                                         "the flag sets nothing (as docker build); write GOFLAGS=VALUE or export "
                                         "GOFLAGS"]


def test_build_args_from_the_environment_and_on_every_task_that_builds(tmp_path: Path) -> None:
    """INVOKE_COMPIMG_BUILD_ARGS_<NAME> was ignored unless invoke.yaml had that key."""
    project = example(tmp_path / "app")
    dry = cli("invoke", ["--dry", "compimg.build"], project, {**NO_ENGINE, "INVOKE_COMPIMG_BUILD_ARGS_VERSION": "9.9"})
    assert dry.returncode == 0 and "; build arg VERSION=9.9" in dry.stdout, dry.stderr
    (project / "invoke.yaml").write_text("compimg:\n  build_args:\n    VERSION: '1'\n    OTHER: kept\n")
    dry = cli("invoke", ["--dry", "compimg.build"], project, {**NO_ENGINE, "INVOKE_COMPIMG_BUILD_ARGS_VERSION": "9.9"})
    assert "; build arg OTHER=kept; build arg VERSION=9.9" in dry.stdout, dry.stderr
    staged = cli("invoke", ["--dry", "compimg.build-stage", "build", "--build-arg", "OTHER=flag"], project, NO_ENGINE)
    assert "; build arg VERSION=1; build arg OTHER=flag" in staged.stdout, staged.stderr
    for task in (["compimg.assemble"], ["compimg.extract-artifact", "build:/go"], ["compimg.shell", "build"]):
        helped = cli("invoke", ["--help", task[0]], project, NO_ENGINE)
        assert "--build-arg" in helped.stdout, task
        ran = cli("invoke", ["--dry", *task, "--build-arg", "A=1", "--build-arg", "B=2"], project, NO_ENGINE)
        assert ran.returncode == 0, (task, ran.stderr)


BUILDING = {"build": [], "build-stage": ["build"], "assemble": [], "extract-artifact": ["build:/go"],
            "shell": ["build"]}


def test_every_task_that_builds_takes_every_build_flag(tmp_path: Path) -> None:
    """`shell`, `extract-artifact` and `assemble` said "No idea what '--builder' is!": they
    build, so they take what every build takes, declared once (`BuildFlags`)."""
    from dataclasses import fields

    from invoke_compimg.tasks.build_flags import BuildFlags

    project = example(tmp_path / "app")
    ns = invoke_compimg.collection(base=project)
    shared = {f.name for f in fields(BuildFlags)}
    assert {"builder", "build_arg", "platform", "network", "no_cache", "pull", "secret", "ssh", "buildkit_host",
            "jobs", "cache_from", "progress", "quiet"} <= shared
    for task in BUILDING:
        assert shared <= {arg.name for arg in ns[task].get_arguments()}, task
        assert shared <= set(inspect.signature(getattr(invoke_compimg, task.replace("-", "_"))).parameters), task
    for task in ("parse", "clean"):  # they build nothing; parse's --builder is whose lowering it shows
        assert not shared - {"builder"} & {arg.name for arg in ns[task].get_arguments()}, task
    # Given on the command line, each reaches the settings (a wrong one is refused by them).
    for task, words in BUILDING.items():
        for flags, message in ((["--builder", "nope"], "--builder 'nope': choose one of auto, buildkit, classic"),
                               (["--jobs", "0"], "--jobs '0': give a whole number of at least 1"),
                               (["--secret", "id=x,src=/nonexistent"], "/nonexistent"),
                               (["--buildkit-host", "http://x"], "--buildkit-host")):
            refused = cli("compimg", ["--dry", task, *words, *flags], project, NO_ENGINE)
            assert message in one_line(refused), (task, flags, refused.stderr)
        accepted = cli("compimg", ["--dry", task, *words, "--builder", "classic", "--pull", "--no-cache", "--network",
                                   "none", "--platform", "linux/amd64", "--cache-from", "x", "--jobs", "2"],
                       project, NO_ENGINE)
        assert accepted.returncode == 0 and accepted.stdout.startswith("would "), (task, accepted.stderr)
    # And from the Python API.
    c = Context(config=Config(defaults=ns.configuration()))
    for call in (lambda: invoke_compimg.shell(c, "build", builder="nope", base=project),
                 lambda: invoke_compimg.extract_artifact(c, "build:/go", builder="nope", base=project),
                 lambda: invoke_compimg.assemble(c, builder="nope", base=project)):
        with pytest.raises(invoke_compimg.UserError, match="--builder 'nope'"):
            call()


def test_short_flags_are_chosen_the_same_on_every_task_and_clash_with_no_core_flag(tmp_path: Path) -> None:
    """`-p` was --push on build and --progress elsewhere; `-r` (build's --progress) is
    Invoke's --search-root after any other task, where it was swallowed in silence."""
    from invoke import Program

    from invoke_compimg.tasks.operation import RESERVED_SHORT

    project = example(tmp_path / "app")
    ns = invoke_compimg.collection(base=project)
    core = {name for arg in Program().core_args() + Program().task_args() for name in arg.names if len(name) == 1}
    letters: dict[str, set[str]] = {}  # short flag -> the long flags it stands for
    tasks = [*ns.tasks.values(), *ns.collections["stage"].tasks.values()]
    assert len(tasks) == 7 + 3
    for task in tasks:
        args = {arg.names[0]: arg.names for arg in task.get_arguments()}
        for short in (n for names in args.values() for n in names if len(n) == 1):
            letters.setdefault(short, set()).add(next(long for long, names in args.items() if short in names))
        if "quiet" in args or "progress" in args:  # the per-stage tasks took neither, so no -q
            assert args["quiet"] == ("quiet", "q") and args["progress"] == ("progress",), task.name
    assert letters == {"t": {"tag"}, "q": {"quiet"}, "o": {"output"}}, letters  # one meaning each, on purpose
    assert not set(letters) & (core | RESERVED_SHORT)
    for task in (["compimg.build-stage", "build"], ["compimg.stage.run"]):
        quiet = cli("invoke", ["--dry", *task, "-q", "--progress", "tty"], project, NO_ENGINE)
        assert one_line(quiet) == "--quiet and --progress tty say two things; give one"
    for program, task in (("invoke", "compimg.stage.unit-tests"), ("compimg", "stage.unit-tests")):
        for flags in (["-q"], ["--progress", "plain"], ["--progress=quiet", "--quiet"]):
            staged = cli(program, ["--dry", task, *flags], project, NO_ENGINE)
            assert staged.returncode == 0 and staged.stdout.endswith("would build stage unit_tests from the images of "
                                                                     "its prerequisites\n"), (flags, staged.stderr)


# --- 3. no silent misreads ------------------------------------------------------------------

DID_YOU_MEAN = "did you mean 'build'? known stages: build, unit_tests, run"
MISREADS = [
    (["compimg.build", "--tag"], {}, "Flag --tag needed value and was not given one!"),
    (["compimg.build", "-t"], {}, "Flag --tag needed value and was not given one!"),
    (["compimg.build", "--tag", "--no-cache"], {}, "Flag --tag needed value and was not given one!"),
    (["compimg.build-stage", "run", "--build-arg"], {}, "Flag --build-arg needed value and was not given one!"),
    (["compimg.build", "--tag="], {}, "--tag needs a value: write --tag REF or --tag STAGE=REF"),
    (["compimg.build", "--tag", "unit_tests=x"], {},
     "--tag for stage(s) unit_tests, which building 'run' does not build; "
     "run `compimg.build --target unit_tests`, or drop that tag"),
    (["compimg.build-stage", "build", "--tag", "run=x"], {},
     "--tag for stage(s) run, which building 'build' does not build; run `compimg.build-stage run`, or drop that tag"),
    (["compimg.assemble", "--tag", "build=x"], {},
     "--tag build=x: assemble builds only 'run'; write --tag REF, or `compimg.assemble --stage build`"),
    (["compimg.parse", "--stage", "run"], {},
     "--stage goes with --lowered: write `compimg.parse --lowered --stage run`"),
    (["compimg.parse", "--format", "json", "--lowered"], {},
     "--format json and --lowered are two different views: write `compimg.parse --format json` "
     "or `compimg.parse --lowered`"),
    (["compimg.build"], {"INVOKE_COMPIMG_JOBS": "abc"}, "INVOKE_COMPIMG_JOBS 'abc': give a whole number of at least 1"),
    (["compimg.build", "--jobs", "0"], {}, "--jobs '0': give a whole number of at least 1"),
    (["compimg.build"], {"INVOKE_COMPIMG_NO_CACHE": "maybe"}, "INVOKE_COMPIMG_NO_CACHE 'maybe': write true or false"),
    (["compimg.build"], {"INVOKE_COMPIMG_PROGRESS": "loud"},
     "INVOKE_COMPIMG_PROGRESS 'loud': choose one of auto, plain, tty, quiet"),
    (["compimg.build"], {"INVOKE_COMPIMG_TAGS_ASSETS": "x"},
     "Dockerfile: unknown stage 'assets' (INVOKE_COMPIMG_TAGS_ASSETS: assets=x); known stages: build, unit_tests, run"),
    (["compimg.build"], {"INVOKE_COMPIMG_TAGS_RUN": ""}, "INVOKE_COMPIMG_TAGS_RUN is empty: give it an image "
                                                         "reference, or unset it"),
    (["compimg.build", "--target", "buidl"], {}, f"unknown stage 'buidl' (--target); {DID_YOU_MEAN}"),
    (["compimg.build", "--tag", "buidl=x"], {}, f"unknown stage 'buidl' (--tag buidl=x); {DID_YOU_MEAN}"),
    (["compimg.build-stage", "buidl"], {}, f"unknown stage 'buidl' (stage); {DID_YOU_MEAN}"),
    (["compimg.assemble", "--stage", "buidl"], {}, f"unknown stage 'buidl' (--stage); {DID_YOU_MEAN}"),
    (["compimg.shell", "buidl"], {}, f"unknown stage 'buidl' (stage); {DID_YOU_MEAN}"),
    (["compimg.extract-artifact", "buidl:/go/bin/app"], {},
     f"unknown stage 'buidl' (extract-artifact); {DID_YOU_MEAN}"),
    (["compimg.parse", "--lowered", "--stage", "buidl"], {}, f"unknown stage 'buidl' (--stage); {DID_YOU_MEAN}"),
    (["compimg.build-stage", "--help"], {},
     "build-stage needs a STAGE first, got '--help'; for help on it run `invoke --help compimg.build-stage`"),
]


@pytest.mark.parametrize(("args", "env", "message"), MISREADS, ids=[" ".join(m[0]) + str(m[1]) for m in MISREADS])
def test_misreads_are_one_clear_line(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    project = example(tmp_path / "app")
    assert one_line(cli("invoke", args, project, {**NO_ENGINE, **env})).endswith(message)


def test_environment_values_are_read_as_written(tmp_path: Path) -> None:
    project = example(tmp_path / "app")

    def dry(env: dict[str, str], *args: str) -> str:
        result = cli("invoke", ["--dry", "compimg.build", *args], project, {**NO_ENGINE, **env})
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "no cache" not in dry({"INVOKE_COMPIMG_NO_CACHE": "false"})
    assert "no cache" not in dry({"INVOKE_COMPIMG_NO_CACHE": "0"})
    assert "; no cache" in dry({"INVOKE_COMPIMG_NO_CACHE": "true"})
    assert "tag unit_tests as ut:1" in dry({"INVOKE_COMPIMG_TAGS_UNIT_TESTS": "ut:1"}, "--target", "unit-tests")
    assert "tag run as from-env" in dry({"INVOKE_COMPIMG_TAGS_RUN": "from-env"})
    assert "would build unit_tests (build, unit_tests)" in dry({"INVOKE_COMPIMG_TARGET": "unit_tests"})


def test_dry_release_prints_what_it_would_build(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    result = cli("invoke", ["--dry", "release"], project, NO_ENGINE)  # no engine: nothing can be built
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"would build run (build, run) from {project}/Dockerfile; tag build as my-app-build; tag run as my-app:1.0"
        "; build arg GOFLAGS=-trimpath",
        "released my-app:1.0"]
    # Our settings from the environment hold for a task of the user's own too (Invoke loads
    # env vars only for the keys of the running task's collections).
    env = cli("invoke", ["--dry", "release"], project, {**NO_ENGINE, "INVOKE_COMPIMG_NO_CACHE": "true"})
    assert "; no cache\n" in env.stdout, env.stderr
    bad = cli("invoke", ["release"], project, {**NO_ENGINE, "INVOKE_COMPIMG_JOBS": "many"})
    assert one_line(bad) == "INVOKE_COMPIMG_JOBS 'many': give a whole number of at least 1"
    staged = cli("invoke", ["--dry", "compimg.build-stage", "unit-tests"], project, NO_ENGINE)  # task spelling
    assert staged.stdout.startswith("would build unit_tests (build, unit_tests) "), staged.stderr
    stage_task = cli("invoke", ["--dry", "compimg.stage.unit-tests"], project, NO_ENGINE)
    assert stage_task.returncode == 0 and "would build stage unit_tests" in stage_task.stdout


# --- 4. paths and hints are the user's ------------------------------------------------------

def test_python_api_resolves_paths_like_collection_from_a_subfolder(tmp_path: Path) -> None:
    project = example(tmp_path / "app", TASKS + API_TASKS)
    deep = project / "src" / "deep"
    deep.mkdir(parents=True)
    result = cli("invoke", ["--dry", "api"], deep, NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert "API-PARSED" in result.stdout
    assert f"would build unit_tests (build, unit_tests) from {project}/Dockerfile" in result.stdout


def test_a_tasks_package_finds_the_dockerfile_next_to_it(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    (project / "tasks.py").unlink()
    (project / "tasks").mkdir()
    (project / "tasks" / "__init__.py").write_text(TASKS)
    (project / "tasks" / "images.py").write_text(
        "from invoke import task\nimport invoke_compimg\n\n@task\ndef where(c):\n"
        "    invoke_compimg.build(c, target='build')\n")
    (project / "tasks" / "__init__.py").write_text(
        TASKS + "\nfrom . import images\nns.add_task(images.where)\n")
    deep = project / "src"
    deep.mkdir()
    listing = cli("invoke", ["--list"], deep, NO_ENGINE)
    assert listing.returncode == 0 and listing.stderr == "" and "compimg.stage.unit-tests" in listing.stdout
    result = cli("invoke", ["--dry", "where"], deep, NO_ENGINE)
    assert result.stdout.startswith(f"would build build (build) from {project}/Dockerfile"), result.stderr


def test_base_names_the_folder_relative_paths_start_from(tmp_path: Path) -> None:
    project = example(tmp_path / "app")
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "tasks.py").write_text(
        "from invoke import Collection\nimport invoke_compimg\n\n"
        f"ns = Collection(invoke_compimg.collection('Dockerfile', '.', name='app', base={str(project)!r}))\n")
    result = cli("invoke", ["--dry", "app.build"], ci, NO_ENGINE)
    assert result.stdout.startswith(f"would build run (build, run) from {project}/Dockerfile"), result.stderr


def test_hints_name_the_task_the_user_can_type(tmp_path: Path) -> None:
    project = example(tmp_path / "app", TASKS.replace("invoke_compimg.collection()",
                                                      "invoke_compimg.collection(name='app')"))
    line = one_line(cli("invoke", ["app.parse", "--stage", "run"], project, NO_ENGINE))
    assert line == "--stage goes with --lowered: write `app.parse --lowered --stage run`"
    line = one_line(cli("invoke", ["app.build", "--tag", "unit_tests=x"], project, NO_ENGINE))
    assert "run `app.build --target unit_tests`" in line
    line = one_line(cli("compimg", ["parse", "--stage", "run"], project, NO_ENGINE))
    assert line == "--stage goes with --lowered: write `compimg parse --lowered --stage run`"
    line = one_line(cli("compimg", ["build", "--tag", "unit_tests=x"], project, NO_ENGINE))
    assert "run `compimg build --target unit_tests`" in line
    line = one_line(cli("compimg", ["shell", "--help"], project, NO_ENGINE))
    assert line.endswith("for help on it run `compimg --help shell`")
    for path in (ROOT / "invoke_compimg").glob("*.py"):  # no message sends users to our own scripts
        assert "scripts/engine" not in path.read_text(), path


# --- 5. output ------------------------------------------------------------------------------

def test_the_python_api_prints_nothing_when_quiet(tmp_path: Path) -> None:
    project = example(tmp_path / "app", TASKS + API_TASKS)
    quiet = cli("invoke", ["--dry", "api"], project, {**NO_ENGINE, "INVOKE_COMPIMG_PROGRESS": "quiet"})
    assert quiet.returncode == 0 and quiet.stdout.splitlines()[0].startswith("API-PARSED"), quiet.stderr
    loud = cli("invoke", ["--dry", "api"], project, NO_ENGINE)
    assert loud.stdout.startswith('{\n  "final": "run"')
    # The parse task always prints what it shows.
    task = cli("invoke", ["compimg.parse"], project, {**NO_ENGINE, "INVOKE_COMPIMG_PROGRESS": "quiet"})
    assert "final: run" in task.stdout


@pytest.mark.engine
def test_release_builds_tags_reports_and_cleans(make_project, api, unique: str) -> None:  # type: ignore[no-untyped-def]
    files = {p.name: p.read_text() for p in EXAMPLE.iterdir() if p.name != "Dockerfile"}
    files["tasks.py"] = TASKS.replace("my-app:1.0", f"{unique}:1.0")
    files["invoke.yaml"] = files["invoke.yaml"].replace("my-app-build", f"{unique}-build")
    project = make_project((EXAMPLE / "Dockerfile").read_text(), files)
    folder = project.context
    result = cli("invoke", ["release"], folder)
    assert result.returncode == 0, result.stderr
    image = api.inspect_image(f"{unique}:1.0")["Id"]
    assert f"[run] tagged {unique}:1.0 ({image})" in result.stdout
    assert f"[build] tagged {unique}-build (sha256:" in result.stdout
    assert re.search(r"^stage\s+image\s+size\s+seconds\s+builder$", result.stdout, re.M)
    assert "final image 'run'" in result.stdout and "released" in result.stdout
    intermediate = cli("invoke", ["compimg.build", "--target", "build"], folder)
    assert intermediate.returncode == 0 and "builder" in intermediate.stdout
    assert "final image" not in intermediate.stdout  # no ratio line for an intermediate target
    # Each stage has its stable name and its reuse record, in the project's one repository.
    names = sorted(ref.partition(":")[2] for i in api.images(name=project.repository) for ref in i["RepoTags"])
    assert [n for n in names if "--I-" not in n] == ["build", "run"]
    assert sorted(n.partition("--I-")[0] for n in names if "--I-" in n) == ["build", "run"]
    cleaned = cli("invoke", ["compimg.clean"], folder)
    assert cleaned.returncode == 0, cleaned.stderr
    assert re.search(r"removed \d+ container\(s\) and \d+ image\(s\) of compimg/\S+", cleaned.stdout), cleaned.stdout
    kept = [line for line in cleaned.stdout.splitlines() if line.startswith("untagged ")]
    assert len(kept) == 2 and all(", kept: still named " in line for line in kept), cleaned.stdout
    assert any(f"{unique}:1.0" in line for line in kept), cleaned.stdout
    assert api.images(name=project.repository) == []
    assert api.inspect_image(f"{unique}:1.0")["Id"] == image  # the user's names stay


@pytest.mark.engine
def test_live_view_on_a_terminal(make_project, unique: str, builder: str) -> None:  # type: ignore[no-untyped-def]
    import pty
    import select
    import time

    project = make_project(f"NAME slow\nFROM busybox\nRUN echo {unique} && sleep 3 && echo done > /x\n"
                           "NAME run\nFROM busybox\nCOPY slow:/x /x\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: compimg build on a real terminal, 100 columns
        os.chdir(project.context)
        os.environ["COLUMNS"], os.environ["LINES"], os.environ["TERM"] = "100", "30", "xterm"
        os.execv(sys.executable, [*COMPIMG, "build", "--no-cache"])
    seen = b""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert os.waitstatus_to_exitcode(status) == 0, text
    # While it ran: the stage's line with its step and elapsed time.
    assert re.search(r"slow\s+\[slow 2/2\] RUN echo " + unique + r".*?\d+\.\ds", text), text
    # Once finished: one collapsed line per stage, kept in the scrollback.
    # BuildKit builds `slow` inside the target's solve: it has no image of its own.
    own_image = r" [0-9a-f]{12}" if builder == "classic" else ""
    assert re.search(r"✔ slow\s+\d+\.\ds\s+built" + own_image, text), text
    assert re.search(r"✔ run\s+\d+\.\ds\s+built [0-9a-f]{12}", text), text
    assert "stopped" not in text  # a stage of a successful build is never left "stopped"


def test_an_env_setting_of_the_wrong_type_for_a_config_file_is_one_line(tmp_path: Path) -> None:
    """`jobs: 2` in invoke.yaml makes Invoke cast INVOKE_COMPIMG_JOBS to int itself."""
    (tmp_path / "Dockerfile").write_text("FROM busybox AS run\n")
    (tmp_path / "invoke.yaml").write_text("compimg:\n  jobs: 2\n  tags: {run: [a, b]}\n")
    for variable, value in (("INVOKE_COMPIMG_JOBS", "abc"), ("INVOKE_COMPIMG_TAGS_RUN", "c")):
        result = cli("compimg", ["build"], tmp_path, {**NO_ENGINE, variable: value})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("an INVOKE_* environment variable does not fit the type"), lines[0]


@pytest.mark.engine
def test_a_quiet_build_prints_the_id_as_a_task_and_nothing_through_the_api(make_project) -> None:  # type: ignore[no-untyped-def]
    tasks = ("from invoke import Collection, task\nimport invoke_compimg\n\n"
             "@task\ndef api(c):\n    ids = invoke_compimg.build(c)\n    print('API-IDS', len(ids))\n\n"
             "ns = Collection(api)\nns.add_collection(invoke_compimg.collection())\n")
    project = make_project("FROM busybox\nRUN true\n", {"tasks.py": tasks})
    quiet = {"INVOKE_COMPIMG_PROGRESS": "quiet"}
    task = cli("invoke", ["compimg.build"], project.context, quiet)
    assert task.returncode == 0 and re.fullmatch(r"sha256:[0-9a-f]{64}\n", task.stdout), task.stdout + task.stderr
    api = cli("invoke", ["api"], project.context, quiet)
    assert api.returncode == 0 and api.stdout == "API-IDS 1\n", api.stdout + api.stderr


# --- 6. what a new user typed ---------------------------------------------------------------

def test_file_and_context_after_the_task_are_honoured(tmp_path: Path) -> None:
    """`compimg build -f ci.Dockerfile` built ./Dockerfile and exited 0."""
    project = example(tmp_path / "app")
    (project / "ci").mkdir()  # -f: the context is its folder, which has no invoke.yaml
    (project / "ci/ci.Dockerfile").write_text("NAME ci\nFROM busybox\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "Dockerfile").write_text("NAME elsewhere\nFROM busybox\n")
    cases = [
        (["build", "-f", "ci/ci.Dockerfile"], f"would build ci (ci) from {project}/ci/ci.Dockerfile"),
        (["build", "--file=ci/ci.Dockerfile", "-t", "x"],
         f"would build ci (ci) from {project}/ci/ci.Dockerfile; tag ci as x"),
        (["build", "--context", str(other)], f"would build elsewhere (elsewhere) from {other}/Dockerfile"),
        (["parse", "--format", "json", "-f", "ci/ci.Dockerfile"], '"final": "ci"'),
    ]
    for args, expected in cases:
        result = cli("compimg", ["--dry", *args], project, NO_ENGINE)
        assert result.returncode == 0 and expected in result.stdout, (args, result.stdout, result.stderr)


def test_the_context_goes_anywhere_among_the_flags(tmp_path: Path) -> None:
    """`compimg build . -t x` said "No idea what '.' is!"."""
    project = example(tmp_path / "app")
    expected = f"would build run (build, run) from {project}/Dockerfile; tag build as my-app-build; tag run as x"
    for args, cwd in ((["build", ".", "-t", "x"], project), (["build", "app", "-t", "x"], tmp_path),
                      (["build", "-t", "x", "app"], tmp_path), (["build", "--no-cache", "app", "-t", "x"], tmp_path)):
        result = cli("compimg", ["--dry", *args], cwd, NO_ENGINE)
        assert result.returncode == 0 and result.stdout.startswith(expected), (args, result.stdout, result.stderr)
    # A task's positional argument is never taken for the context, even when a folder has its name.
    (project / "build").mkdir()
    staged = cli("compimg", ["--dry", "build-stage", "build", "."], project, NO_ENGINE)
    assert staged.stdout.startswith(f"would build build (build) from {project}/Dockerfile"), staged.stderr
    (project / "src").mkdir(exist_ok=True)
    two = one_line(cli("compimg", ["build", ".", "src"], project, NO_ENGINE))
    assert two == "two build contexts given, '.' and 'src'; give one"


def test_help_never_needs_a_dockerfile(tmp_path: Path) -> None:
    for args in (["--help"], ["--help", "build"], ["build", "--help"]):
        helped = cli("compimg", args, tmp_path, NO_ENGINE)
        assert helped.returncode == 0 and helped.stderr == "", (args, helped.stderr)
        assert "build" in helped.stdout
    listed = cli("compimg", ["--list"], tmp_path, NO_ENGINE)  # listing says why there are no stage tasks
    assert listed.returncode == 0 and "Dockerfile: no such file" in listed.stderr


def test_a_core_flag_after_a_task_is_one_line_not_swallowed(tmp_path: Path) -> None:
    """`invoke compimg.build-stage test -r quiet`: Invoke took -r as its --search-root, after the
    tasks were found, and the build ran with plain output without a word."""
    project = example(tmp_path / "app")
    for args, flag, core in ((["compimg.build-stage", "build", "-r", "quiet"], "-r", "--search-root"),
                             (["compimg.build", "--search-root=x"], "--search-root", "--search-root"),
                             (["compimg.shell", "build", "-c", "other"], "-c", "--collection")):
        line = one_line(cli("invoke", ["--dry", *args], project, NO_ENGINE))
        assert line.startswith(f"{flag} after the task is Invoke's own {core}, read only before the first task"), line
    line = one_line(cli("compimg", ["build-stage", "build", "-r", "quiet"], project, NO_ENGINE))
    assert line == ("-r after the task is Invoke's own --search-root, which means nothing here; "
                    "see `compimg --help build-stage` for the task's own flags")
    before = cli("invoke", ["--dry", "-r", str(project), "compimg.build-stage", "build"], tmp_path, NO_ENGINE)
    assert before.returncode == 0, before.stderr  # before the task it is Invoke's, as ever


def test_jobs_is_said_to_bound_what_every_builder_sends_at_once(tmp_path: Path) -> None:
    """`--help build` said --jobs was the classic builder's; every builder sends up to `jobs`
    units at once (`BuildRun.build` hands `builder.jobs` to the scheduler): classic stages,
    BuildKit solves."""
    from invoke_compimg.builders.base import Builder
    from invoke_compimg.builders.buildkit import BuildKitBuilder
    from invoke_compimg.builders.buildkit_service import BuildKitServiceBuilder
    from invoke_compimg.builders.classic import ClassicBuilder

    for kind in (ClassicBuilder, BuildKitBuilder, BuildKitServiceBuilder):
        assert kind.jobs is Builder.jobs, kind  # none of them narrows it: what the help says holds for all
    project = example(tmp_path / "app")
    for task in BUILDING:
        helped = " ".join(cli("compimg", ["--help", task], project, NO_ENGINE).stdout.split())
        assert re.search(r"--jobs=STRING builds sent at the same time \(default 4\): stages with the classic "
                         r"builder, solves .* with BuildKit", helped), (task, helped)
    readme = (ROOT / "README.md").read_text()
    assert "| `jobs` | `4` | builds sent at the same time: stages (classic builder), solves (BuildKit" in readme
