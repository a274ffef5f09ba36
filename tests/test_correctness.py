"""Issue 11, "Correct on real Dockerfiles": each case end to end on the real engine, driven
the way a user drives it (`invoke` in a project folder with a three-line tasks.py and an
invoke.yaml), with a `builder` parameter so that BuildKit can join the list later.
The engine-free parts (name normalisation, Podman's step lines, the push plan) are unit
tests at the end."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import peers
import pytest
from conftest import ROOT, FakeReporter, cli
from engine_helpers import again_unless_pruned, build_cache_ids, docker_build, run_image

from invoke_compimg.errors import UserError

registry = peers.registry  # the suite's local registry (module fixture)

BUILDERS = ["classic", "buildkit"]
TASKS_PY = "from invoke import Collection\nimport invoke_compimg\n\nns = Collection()\n" \
           "ns.add_collection(invoke_compimg.collection())\n"
HELLO = ROOT / "examples/hello-go"
SEED_EXAMPLE = """\
NAME build
FROM golang:onbuild

NAME run
FROM busybox
WORKDIR /app
COPY build:/go/bin/app .
CMD ["./app"]
"""
GO_ONBUILD = ("FROM golang:1.19\nRUN mkdir -p /go/src/app\nWORKDIR /go/src/app\n"
              "ONBUILD COPY . /go/src/app\nONBUILD RUN go build -o /go/bin/app .\n")


def user_project(make_project: Callable[..., Any], dockerfile: str, builder: str,
                 files: dict[str, str] | None = None, config: str = "") -> Any:
    """A project folder as a user has it: Dockerfile, tasks.py, invoke.yaml (the builder
    for tasks that take no flags, and `config` under `compimg:`)."""
    project = make_project(dockerfile, {"tasks.py": TASKS_PY, **(files or {})})
    (project.context / "invoke.yaml").write_text(f"compimg:\n  builder: {builder}\n{config}")
    return project


def invoke(project: Any, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = cli("invoke", list(args), project.context, env=env)
    return result.returncode, result.stdout, result.stderr


def local_image(api: Any, project: Any, stage: str) -> str:
    return str(api.inspect_image(project.local_ref(stage))["Id"])


def build_image(api: Any, dockerfile: str, tag: str) -> None:
    """A base image of the test's own (the engine cannot pull): `docker build` of `dockerfile`."""
    docker_build(api, fileobj=io.BytesIO(dockerfile.encode()), tag=tag)


@pytest.fixture
def base_images(api: Any) -> Iterator[Callable[[str, str], str]]:
    """Makes base images; removes them after the test's projects are cleaned (request this
    fixture before `make_project`)."""
    made: list[str] = []

    def make(dockerfile: str, tag: str) -> str:
        build_image(api, dockerfile, tag)
        made.append(tag)
        return tag

    yield make
    import docker

    for tag in reversed(made):
        with contextlib.suppress(docker.errors.NotFound):  # make_project removes `unique` names too
            api.remove_image(tag, force=True)


# --- 1. ONBUILD base images ---------------------------------------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_seed_example_on_an_onbuild_image(builder: str, base_images: Any, make_project: Any, api: Any,
                                          unique: str) -> None:
    base = base_images(GO_ONBUILD, f"{unique}-golang:onbuild")
    files = {"main.go": (HELLO / "main.go").read_text(), "go.mod": (HELLO / "go.mod").read_text()}
    project = user_project(make_project, SEED_EXAMPLE.replace("golang:onbuild", base), builder, files)
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--tag", f"{unique}-app")
    assert code == 0, out + err
    assert run_image(api, f"{unique}-app") == (0, "Hello, 世界\n")
    # The binary only: the final image is busybox plus the app, not the Go toolchain.
    assert api.inspect_image(f"{unique}-app")["Size"] < 20e6
    # Unchanged sources: nothing is sent again. A changed source: rebuilt, new output.
    code, out, err = invoke(project, "compimg.build", "--builder", builder)
    reused = 2 if builder == "classic" else 1  # BuildKit: one solve, one record, for the target
    assert code == 0 and out.count("(reused)") == reused, out + err
    (project.context / "main.go").write_text((HELLO / "main.go").read_text().replace("世界", "again"))
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--tag", f"{unique}-app")
    assert code == 0 and "(reused)" not in out, out + err
    assert run_image(api, f"{unique}-app") == (0, "Hello, again\n")


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_seed_example_verbatim_with_golang_onbuild(builder: str, base_images: Any, make_project: Any, api: Any,
                                                   unique: str) -> None:
    """The seed's literal `FROM golang:onbuild`: our stand-in takes that name only when the
    engine has no such image (and is removed afterwards)."""
    have = [t for i in api.images(name="golang") for t in (i.get("RepoTags") or [])]
    if "golang:onbuild" in have:
        pytest.skip("the engine has its own golang:onbuild; not replacing it")
    base_images(GO_ONBUILD, "golang:onbuild")
    files = {"main.go": (HELLO / "main.go").read_text(), "go.mod": (HELLO / "go.mod").read_text()}
    project = user_project(make_project, SEED_EXAMPLE, builder, files)
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--tag", f"{unique}-app")
    assert code == 0, out + err
    if builder == "classic":
        assert "Executing 2 build triggers" in out
    assert run_image(api, f"{unique}-app") == (0, "Hello, 世界\n")


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_onbuild_trigger_reads_one_file(builder: str, base_images: Any, make_project: Any, api: Any,
                                        unique: str) -> None:
    base = base_images("FROM busybox\nONBUILD COPY only.txt /x\n", f"{unique}-only:1")
    project = user_project(make_project, f"NAME app\nFROM {base}\nRUN cat /x\n", builder,
                           {"only.txt": "one\n", "other.txt": "unread\n"})

    def build() -> str:
        code, out, err = invoke(project, "compimg.build", "--builder", builder)
        assert code == 0, out + err
        return out

    build()
    assert run_image(api, project.local_ref("app"), ["cat", "/x"]) == (0, "one\n")
    first = local_image(api, project, "app")
    (project.context / "other.txt").write_text("changed, and still unread\n")
    assert "(reused)" in build()  # whole-stage skip: the trigger does not read other.txt
    assert local_image(api, project, "app") == first
    (project.context / "only.txt").write_text("two\n")
    assert "(reused)" not in build()
    assert run_image(api, project.local_ref("app"), ["cat", "/x"]) == (0, "two\n")


# --- 2. ONBUILD COPY --from=<stage> inside the file ----------------------------------------

ONBUILD_FROM = """\
FROM busybox AS src
RUN echo hi > /file
FROM busybox AS base
ONBUILD COPY --from=src /file /foo
FROM base
RUN cat /foo
"""


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_onbuild_copy_from_a_stage(builder: str, make_project: Any, api: Any) -> None:
    project = user_project(make_project, ONBUILD_FROM, builder)
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--no-cache")
    if builder == "buildkit":  # Docker 20.10's BuildKit resolves the trigger's --from wrongly: one line
        assert code == 1 and err.strip().splitlines()[-1].endswith(
            "build with --builder classic (auto does)"), out + err
        assert ":5: an ONBUILD trigger with `COPY --from=`" in err
        code, out, err = invoke(project, "compimg.build", "--builder", "auto", "--no-cache")
    assert code == 0, out + err
    assert "[stage-2] hi" in out.splitlines()  # what `docker build` of this file prints
    assert run_image(api, project.local_ref("stage-2"), ["cat", "/foo"]) == (0, "hi\n")
    # The graph says so.
    code, out, err = invoke(project, "compimg.parse", "--format", "json")
    stages = {s["name"]: s for s in json.loads(out)["stages"]}
    assert stages["stage-2"]["depends_on"] == ["base", "src"]
    assert stages["base"]["depends_on"] == ["src"]
    # The lowered classic text: the trigger keeps a reference to src, filled at build time.
    code, out, err = invoke(project, "compimg.parse", "--lowered", "--stage", "base", "--builder", "classic")
    assert out == "FROM busybox\nONBUILD COPY --from={{stage:src}} /file /foo\n"
    # The tasks' pre.
    import invoke_compimg

    ns = invoke_compimg.collection(base=project.context, report=False)
    pre = [t.name for t in ns.collections["stage"].tasks["stage-2"].pre]
    assert pre == ["base", "src"]



ONBUILD_FROM_IMAGE = """\
FROM busybox AS base
ONBUILD COPY --from=busybox /etc/passwd /copied
FROM base
RUN grep -q root /copied && echo copied-from-an-image
"""


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["auto"])
def test_onbuild_copy_from_an_image_takes_the_classic_builder(builder: str, make_project: Any, api: Any) -> None:
    """Docker 20.10's BuildKit resolves an ONBUILD trigger's `--from=<image>` against the wrong
    root too (`lstat .../etc/passwd: no such file`): auto takes the classic builder for it."""
    project = user_project(make_project, ONBUILD_FROM_IMAGE, "auto")
    code, out, err = invoke(project, "compimg.build", "--builder", "auto", "--no-cache")
    assert code == 0, out + err
    assert "copied-from-an-image" in out
    assert any(line.startswith("stage-1 ") and line.endswith("classic") for line in out.splitlines()), out
    code, out, err = invoke(project, "compimg.build", "--builder", "buildkit")
    assert code == 1 and ":3: an ONBUILD trigger with `COPY --from=`" in err, err


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["auto"])
def test_a_misspelt_copy_from_suggests_the_stage(builder: str, make_project: Any) -> None:
    """Native syntax: `--from=biuld` is no stage, so it is taken for an image, which cannot be
    pulled; the line says which stage was meant."""
    project = user_project(make_project, "FROM busybox AS build\nRUN echo x > /x\n"
                           "FROM busybox\nCOPY --from=biuld /x /x\n", "auto")
    code, _, err = invoke(project, "compimg.build")
    line = err.strip().splitlines()[-1]
    assert code == 1 and line.startswith(f"{project.dockerfile}:4: ") and "did you mean stage 'build'?" in line, err

@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_onbuild_copy_from_a_stage_as_a_task(builder: str, make_project: Any, api: Any) -> None:
    """`invoke compimg.stage.stage-2` on a fresh project: its pre-tasks build src first."""
    project = user_project(make_project, ONBUILD_FROM, builder)
    code, out, err = invoke(project, "compimg.stage.stage-2")
    if builder == "buildkit":
        assert code == 1 and "build with --builder classic" in err, out + err
        return
    assert code == 0, out + err
    assert out.index("[src]") < out.index("[base]") < out.index("[stage-2]"), out
    assert run_image(api, project.local_ref("stage-2"), ["cat", "/foo"]) == (0, "hi\n")


# --- 3. --push publishes only what this run built ------------------------------------------

PUSH_FILE = """\
FROM busybox AS build
COPY src.txt /src.txt
FROM busybox
COPY --from=build /src.txt /a
FROM busybox
RUN true
FROM busybox
COPY --from=build /src.txt /final
"""


def registry_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(request) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_push_never_publishes_an_old_image(builder: str, registry: str, make_project: Any, api: Any,
                                           unique: str) -> None:
    repo = f"{unique}/app"
    ref = f"{registry}/{repo}:cfg"
    project = user_project(make_project, PUSH_FILE, builder, {"src.txt": "v1\n"},
                           config=f"  tags:\n    stage-3: {ref}\n")
    try:
        pushes_only_what_it_built(builder, registry, project, api, repo, ref)
    finally:
        if api.images(name=ref.rsplit(":", 1)[0]):
            api.remove_image(ref, force=True)


def pushes_only_what_it_built(builder: str, registry: str, project: Any, api: Any, repo: str, ref: str) -> None:
    code, out, err = invoke(project, "compimg.build", "--builder", builder)
    assert code == 0, out + err
    (project.context / "src.txt").write_text("v2\n")
    # The seed pushed :cfg here, still naming the image built from v1.
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--target", "build", "--push")
    assert code == 0, out + err  # the build ran, and --push said what it left out (no crash)
    lines = (out + err).splitlines()
    assert f"warning: --push: not pushing {ref}: stage 'stage-3' is not part of this build of 'build', so the tag " \
           "may name an old image; build --target stage-3 to push it" in lines, out + err
    assert "warning: --push: no tag for 'build' to push; add --tag REF" in lines, out + err
    assert not any("pushing" in line and "not pushing" not in line for line in lines), out + err
    assert registry_json(f"http://{registry}/v2/{repo}/tags/list") == 404  # nothing reached the registry
    # Building the target that the tag names pushes it: one line with its digest.
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--push")
    assert code == 0, out + err
    pushed = [line for line in out.splitlines() if line.startswith(f"[stage-3] pushed {ref}@sha256:")]
    assert len(pushed) == 1, out
    assert "Pushed" not in out and "Layer already exists" not in out  # per-layer lines: terminals only
    assert registry_json(f"http://{registry}/v2/{repo}/tags/list") == {"name": repo, "tags": ["cfg"]}
    manifest = registry_json(f"http://{registry}/v2/{repo}/manifests/cfg")
    assert manifest["config"]["digest"] == local_image(api, project, "stage-3")
    assert run_image(api, ref, ["cat", "/final"]) == (0, "v2\n")


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_push_says_which_tags_it_does_not_push(builder: str, registry: str, make_project: Any, api: Any,
                                               unique: str) -> None:
    ref = f"{registry}/{unique}/app:cfg"
    project = user_project(make_project, PUSH_FILE, builder, {"src.txt": "v1\n"},
                           config=f"  tags:\n    stage-3: {ref}\n")
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--target", "build", "--push")
    assert code == 0, out + err
    said = [line for line in (out + err).splitlines() if ref in line]
    assert said == [f"warning: --push: not pushing {ref}: stage 'stage-3' is not part of this build of 'build', "
                    "so the tag may name an old image; build --target stage-3 to push it"], out + err
    assert registry_json(f"http://{registry}/v2/{unique}/app/tags/list") == 404


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_push_of_intermediate_stages_is_opt_in(builder: str, registry: str, make_project: Any, api: Any,
                                               unique: str) -> None:
    repo = f"{unique}/app"
    final, middle = f"{registry}/{repo}:final", f"{registry}/{repo}:build"
    project = user_project(make_project, PUSH_FILE, builder, {"src.txt": "v1\n"},
                           config=f"  tags:\n    stage-3: {final}\n    build: {middle}\n")
    try:
        code, out, err = invoke(project, "compimg.build", "--builder", builder, "--push")
        assert code == 0, out + err
        assert registry_json(f"http://{registry}/v2/{repo}/tags/list") == {"name": repo, "tags": ["final"]}
        said = [line for line in (out + err).splitlines() if middle in line and "push" in line]
        assert len(said) == 1 and "--push-all" in said[0], out + err  # one line, not a silent drop
        code, out, err = invoke(project, "compimg.build", "--builder", builder, "--push", "--push-all")
        assert code == 0, out + err
        assert f"pushed {middle}@sha256:" in out
        tags = registry_json(f"http://{registry}/v2/{repo}/tags/list")["tags"]
        assert sorted(tags) == ["build", "final"]
        manifest = registry_json(f"http://{registry}/v2/{repo}/manifests/build")
        assert manifest["config"]["digest"] == local_image(api, project, "build")
    finally:
        for ref in (final, middle):
            if api.images(name=ref.rsplit(":", 1)[0]):
                api.remove_image(ref, force=True)


# --- 4. build args per stage -----------------------------------------------------------------

ARGS_FILE = """\
NAME build
FROM busybox
ARG VERSION
RUN echo "version=$VERSION" > /v
NAME other
FROM busybox
RUN echo other > /o
NAME run
FROM busybox
COPY build:/v /v
COPY other:/o /o
"""


def step_cached(out: str, text: str) -> bool:
    """Did the plain progress in `out` show the step whose line holds `text` as CACHED?"""
    lines = out.splitlines()
    step = next((line for line in lines if text in line), None)
    return step is not None and f"{step.split()[0]} {step.split()[1]} CACHED" in lines


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_build_args_reach_only_the_stages_that_declare_them(builder: str, make_project: Any, api: Any,
                                                            unique: str) -> None:
    # The unique word keeps BuildKit's engine-wide cache of an earlier run from answering.
    text = ARGS_FILE.replace('> /v\n', f'> /v # {unique}\n')
    project = user_project(make_project, text, builder, config="  build_args:\n    VERSION: '1'\n")
    code, out, err = invoke(project, "compimg.build", "--builder", builder)
    assert code == 0, out + err
    assert "were not consumed" not in out + err
    assert run_image(api, project.local_ref("run"), ["cat", "/v"]) == (0, "version=1\n")
    other = local_image(api, project, "other") if builder == "classic" else None
    cache = build_cache_ids(api) if builder == "buildkit" else set()
    (project.context / "invoke.yaml").write_text(f"compimg:\n  builder: {builder}\n  build_args:\n    VERSION: '2'\n")
    code, out, err = again_unless_pruned(api, cache, lambda: invoke(project, "compimg.build", "--builder", builder),
                                         lambda found: builder == "classic" or step_cached(found[1], "RUN echo other"))
    assert code == 0, out + err
    if builder == "classic":  # a request per stage: `other` is not sent again
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("build ", "other ", "run "))}
        assert "(reused)" in rows["other"] and "(reused)" not in rows["build"], out
        assert local_image(api, project, "other") == other
    else:  # one solve: BuildKit's cache keeps `other`'s step, and reruns `build`'s
        lines = out.splitlines()
        assert step_cached(out, "RUN echo other"), out
        step = next(i for i, line in enumerate(lines) if 'RUN echo "version=$VERSION"' in line)
        assert f"[build] {lines[step].split()[1]} CACHED" not in lines, out  # VERSION changed: it ran again
        assert run_image(api, project.local_ref("run"), ["cat", "/v"]) == (0, "version=2\n")
    # `--build-arg NAME`: the value comes from the environment.
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--build-arg", "VERSION",
                            env={"VERSION": "from-env"})
    assert code == 0, out + err
    assert run_image(api, project.local_ref("run"), ["cat", "/v"]) == (0, "version=from-env\n")
    result = cli("invoke", ["compimg.build", "--builder", builder, "--build-arg", "VERSION"], project.context,
                 {"VERSION": None})
    # As docker build: not set in the environment, the flag sets nothing (config's VERSION holds).
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "VERSION" in line] == [
        "warning: --build-arg VERSION: VERSION is not set in the environment, so the flag sets nothing "
        "(as docker build); write VERSION=VALUE or export VERSION"]
    assert run_image(api, project.local_ref("run"), ["cat", "/v"]) == (0, "version=2\n")


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_a_build_arg_nothing_declares_is_one_warning(builder: str, make_project: Any) -> None:
    project = user_project(make_project, ARGS_FILE, builder)
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--build-arg", "NOPE=1")
    assert code == 0, out + err
    said = [line for line in (out + err).splitlines() if "NOPE" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), out + err


# --- 5. messages quote the user's file ----------------------------------------------------------

FAILURES = [
    ("run-after-from-stage", "FROM busybox AS base\nRUN echo base\nFROM base\nRUN exit 3\n", 4, "RUN exit 3"),
    ("copy-from-missing-path", "FROM busybox AS build\nRUN mkdir /out\nFROM busybox\n"
     "COPY --from=build /out/nope /x\n", 4, "COPY --from=build /out/nope /x"),
    ("seed-copy-missing-path", "NAME build\nFROM busybox\nRUN mkdir /out\nNAME run\nFROM busybox\n"
     "COPY build:/out/nope .\n", 6, "COPY build:/out/nope ."),
    ("run-mentioning-a-stage", "FROM busybox AS build\nRUN echo hi > /x\nFROM busybox\nCOPY --from=build /x /x\n"
     "RUN cat /x && echo build && exit 4\n", 5, "RUN cat /x && echo build && exit 4"),
]


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("case,dockerfile,line,instruction", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_quote_the_users_line(builder: str, case: str, dockerfile: str, line: int, instruction: str,
                                       make_project: Any) -> None:
    project = user_project(make_project, dockerfile, builder)
    code, out, err = invoke(project, "compimg.build", "--builder", builder)
    assert code == 1, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{project.dockerfile}:{line}: ") and f" at {instruction}: " in last, err
    for leaked in ("{{stage:", "sha256:"):
        assert leaked not in out + err, out + err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_misspelt_stage_suggests_the_stage(builder: str, make_project: Any) -> None:
    # The project is made with a correct file (making it parses), then the user mistypes.
    text = "NAME build\nFROM busybox\nRUN echo hi > /x\nNAME run\nFROM busybox\nCOPY build:/x /x\n"
    project = user_project(make_project, text, builder)
    (project.context / "Dockerfile").write_text(text.replace("COPY build:", "COPY buidl:"))
    code, out, err = invoke(project, "compimg.build", "--builder", builder)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"{project.dockerfile}:6: 'buidl:/x' is not in the build context")
    assert "did you mean stage 'build'? (write build:/x)" in err
    assert "[run]" not in out, "a parse-time error: nothing is built"


# --- 6. names from other engines (no engine needed) ----------------------------------------------

def test_normalise_ref() -> None:
    from invoke_compimg.names import normalise_ref, short_id

    assert normalise_ref("docker.io/compimg/hello-12345678:build") == "compimg/hello-12345678:build"
    assert normalise_ref("docker.io/library/busybox:latest") == "busybox:latest"
    assert normalise_ref("docker.io/library/busybox") == "busybox:latest"
    assert normalise_ref("localhost/compimg/x:run") == "compimg/x:run"
    assert normalise_ref("index.docker.io/library/golang:1.19") == "golang:1.19"
    assert normalise_ref("127.0.0.1:5000/app") == "127.0.0.1:5000/app:latest"
    assert normalise_ref("127.0.0.1:5000/app:v1") == "127.0.0.1:5000/app:v1"
    assert normalise_ref("busybox@sha256:" + "a" * 64) == "busybox@sha256:" + "a" * 64
    assert short_id("sha256:0d2745efe275aaaa") == "0d2745efe275"


def test_split_ref() -> None:
    from invoke_compimg.names import split_ref

    assert split_ref("busybox") == ("busybox", "")
    assert split_ref("busybox:1.36") == ("busybox", "1.36")
    assert split_ref("127.0.0.1:5000/app") == ("127.0.0.1:5000/app", "")
    assert split_ref("127.0.0.1:5000/app:v1") == ("127.0.0.1:5000/app", "v1")
    assert split_ref("app@sha256:" + "a" * 64) == ("app@sha256:" + "a" * 64, "")


@pytest.mark.parametrize("step", ["Step {n}/3 : ", "STEP {n}/3: "])
def test_step_lines_map_to_the_users_instruction(step: str) -> None:
    """Docker's `Step 2/3 : ...` and Podman's `STEP 2/3: ...` name the lowered line; the
    user sees their own instruction, never the image ID that replaced the stage's name."""
    from invoke_compimg.builders.classic import StepStream
    from invoke_compimg.dockerfile.lowering import per_stage
    from invoke_compimg.dockerfile.parse import parse_text

    graph = parse_text("NAME build\nFROM busybox\nNAME run\nFROM busybox\nCOPY build:/x /y\nRUN echo done\n")
    reporter = FakeReporter()
    stream = StepStream("run", per_stage(graph, "run"), reporter)
    image = "sha256:" + "b" * 64
    stream.log(step.format(n=1) + "FROM busybox\n" + step.format(n=2) + f"COPY --from={image} /x /y\n")
    stream.log(step.format(n=3) + "RUN echo done\ndone\n")
    stream.close()
    stream.finish_step()
    steps = [e[2] for e in reporter.events if e[0] == "step"]
    assert steps == ["[run 1/3] FROM busybox", "[run 2/3] COPY build:/x /y", "[run 3/3] RUN echo done"]
    assert ("output", "run", "done") in reporter.events
    assert not any(image in " ".join(e) for e in reporter.events)


# --- the push plan (no engine needed) ----------------------------------------------------------

def test_push_plan_says_what_it_does_not_push() -> None:
    from invoke_compimg.building.push import plan

    tags = {"build": ("r/app:build",), "run": ("r/app:1", "r/app:latest"), "old": ("r/app:old",)}
    built = {"build": "sha256:b", "run": "sha256:r"}
    lines: list[str] = []
    assert plan(tags, built, "run", False, lines.append) == [("run", "r/app:1", "sha256:r"),
                                                              ("run", "r/app:latest", "sha256:r")]
    assert len(lines) == 2
    assert "r/app:build" in lines[0] and "--push-all" in lines[0]
    assert "r/app:old" in lines[1] and "not part of this build of 'run'" in lines[1]
    lines.clear()
    assert [r for _, r, _ in plan(tags, built, "run", True, lines.append)] == ["r/app:build", "r/app:1",
                                                                               "r/app:latest"]
    assert len(lines) == 1 and "r/app:old" in lines[0]
    with pytest.raises(UserError, match="stage 'old' is not part of this build"):
        plan(tags, built, "run", True)


# --- found in review: build args in FROM, builders side by side, our folder in messages -------

@pytest.mark.engine
@pytest.mark.parametrize("builder", BUILDERS)
def test_a_build_arg_that_changes_from_is_what_is_built_and_reused(builder: str, base_images: Any,
                                                                   make_project: Any, api: Any,
                                                                   unique: str) -> None:
    base_images("FROM busybox\nRUN echo one > /marker\n", f"{unique}-base:v1")
    base_images("FROM busybox\nRUN echo two > /marker\n", f"{unique}-base:v2")
    project = user_project(make_project, f"ARG TAG=v1\nFROM {unique}-base:${{TAG}}\nRUN cat /marker\n", builder)
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--build-arg", "TAG=v2")
    assert code == 0 and "[stage-0] two" in out, out + err
    # The same build arg, but v2 is now another image: the old result must not be reused.
    base_images("FROM busybox\nRUN echo three > /marker\n", f"{unique}-base:v2")
    code, out, err = invoke(project, "compimg.build", "--builder", builder, "--build-arg", "TAG=v2")
    assert code == 0 and "(reused)" not in out and "[stage-0] three" in out, out + err


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["both"])  # each build names its builder
def test_switching_builders_keeps_one_image_per_builder(builder: str, make_project: Any, api: Any) -> None:
    project = user_project(make_project, "FROM busybox AS a\nCOPY a.txt /a\nFROM busybox\nCOPY --from=a /a /b\n",
                           "auto", files={"a.txt": "0"})
    counts = []
    for n in range(3):
        (project.context / "a.txt").write_text(str(n + 1))
        for builder in ("buildkit", "classic"):
            code, out, err = invoke(project, "compimg.build", "--builder", builder)
            assert code == 0, out + err
        counts.append(len({i["Id"] for i in api.images(name=project.repository)}))
    # classic: a and stage-1; BuildKit: stage-1. Superseded ones go, whichever builder ran last.
    assert counts == [3, 3, 3], counts


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["buildkit"])
def test_buildkit_messages_never_show_our_context_folder(builder: str, make_project: Any) -> None:
    project = user_project(make_project, "FROM busybox\nCOPY missing.txt /x\n", builder, files={"sub/ctx/b": "b"})
    code, _, err = invoke(project, "compimg.build", "--builder", builder)
    assert code == 1 and err.strip().endswith('"/missing.txt" not found: not found'), err
    assert "ctx" not in err
