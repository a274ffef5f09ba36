"""Heredocs (Dockerfile 1.4): parsed as BuildKit parses them, lowered into plain Dockerfile
(`heredocs.py`), and built end to end by both builders: each heredoc form against the same
Dockerfile written without heredocs, with the same files, modes, owners and config (and on
Podman's service: tests/test_podman.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Builder, config_of, image_listing, run_image

from invoke_compimg.building.context import archive
from invoke_compimg.dockerfile.heredocs import INLINE_FOLDER
from invoke_compimg.dockerfile.lowering import multi_stage, per_stage, writes_files
from invoke_compimg.dockerfile.model import Copy, Run
from invoke_compimg.dockerfile.parse import parse_text
from invoke_compimg.errors import UserError


def lines(text: str, stage: str | None = None, **kwargs: Any) -> list[str]:
    graph = parse_text(text)
    lowered = per_stage(graph, stage or graph.final.name, **kwargs)
    return lowered.text.splitlines()


# --- parsing -------------------------------------------------------------------------------
def test_run_and_copy_carry_their_heredocs() -> None:
    graph = parse_text("FROM busybox\nRUN python3 <<EOF\nprint(1)\nEOF\nCOPY <<A <<-'B' /d/\na\nA\n\tb\n\tB\n"
                       "RUN [\"<<EOF\"]\n")
    run, copy, json_run = graph.final.instructions[1:]
    assert isinstance(run, Run) and run.command == "python3 <<EOF"
    assert [(h.name, h.content) for h in run.heredocs] == [("EOF", "print(1)\n")]
    assert isinstance(copy, Copy) and copy.groups == () and copy.dest == "/d/"
    assert [(h.name, h.body, h.expand) for h in copy.inline] == [("A", "a\n", True), ("B", "b\n", False)]
    assert graph.final.context_sources == ()  # heredoc sources are not context files
    assert isinstance(json_run, Run) and json_run.heredocs == () and json_run.line == 10


@pytest.mark.parametrize("text,line,message", [
    ("FROM busybox\nRUN <<EOF\necho\n", 2, "unterminated heredoc <<EOF"),
    ("FROM busybox\nCOPY a <<EOF\nx\nEOF\n", 2, "COPY cannot take a heredoc as its destination"),
    ("FROM busybox\nONBUILD RUN <<EOF\necho\nEOF\n", 2, "ONBUILD with a heredoc"),
    ("FROM busybox\nCOPY <<\"a*b\" /d/\nx\na*b\n", 2, "heredoc name 'a*b' becomes a file name"),
    ("FROM busybox\nCOPY <<EOF /d\n${X\nEOF\n", 2, "the heredoc's content cannot be expanded"),
    ("FROM busybox\nRUN <<'a b'\n#!/bin/sh\na b\n", 2, "names the script file"),
    ("FROM busybox AS a\nFROM busybox\nCOPY --from=a /x <<EOF /file\ny\nEOF\n", 3, "needs a directory destination"),
])
def test_heredoc_mistakes_are_one_line(text: str, line: int, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_text(text)
    assert str(caught.value).startswith(f"Dockerfile:{line}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value) and "; " in str(caught.value)


# --- lowering ------------------------------------------------------------------------------
def test_run_heredoc_is_buildkits_argument_list_in_exec_form() -> None:
    text = "FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-EOF\n\techo tabs\n\tEOF\n"
    assert lines(text)[1:] == ['RUN ["/bin/sh", "-c", "echo a\\necho b\\n"]', 'RUN ["/bin/sh", "-c", "echo tabs\\n"]']


def test_run_heredoc_read_by_a_command_keeps_the_heredocs_for_the_shell() -> None:
    text = "FROM busybox\nRUN cat <<A > /a && cat <<-B > /b\nfirst\nA\n\tsecond\n\tB\n"
    assert json.loads(lines(text)[1][4:]) == ["/bin/sh", "-c", "cat <<A > /a && cat <<-B > /b\nfirst\nA\n\tsecond\nB"]


def test_run_heredoc_uses_the_stages_shell() -> None:
    text = 'FROM busybox AS a\nSHELL ["/bin/ash", "-eo", "pipefail", "-c"]\nFROM a\nRUN <<EOF\necho\nEOF\n'
    assert lines(text)[1] == 'RUN ["/bin/ash", "-eo", "pipefail", "-c", "echo\\n"]'
    # An external base image's own shell, from its config.
    assert lines("FROM img\nRUN <<EOF\necho\nEOF\n", image_config=lambda ref: {"Shell": ["/bin/bash", "-c"]})[1] == \
        'RUN ["/bin/bash", "-c", "echo\\n"]'


def test_script_heredoc_is_mounted_for_buildkit_and_written_for_classic() -> None:
    text = "FROM busybox\nRUN --network=none <<EOF\n#!/bin/sh\necho it's me\nEOF\n"
    graph = parse_text(text)
    buildkit = multi_stage(graph, context_prefix="ctx/")
    [(path, file)] = buildkit.files.items()
    assert path.startswith(INLINE_FOLDER + "/") and path.endswith("/EOF")
    assert (file.data, file.mode) == (b"#!/bin/sh\necho it's me\n", 0o755)
    assert buildkit.text.splitlines()[1] == (
        f"RUN --network=none --mount=type=bind,source={path},target=/dev/pipes/EOF "
        '["/bin/sh", "-c", "/dev/pipes/EOF"]')
    classic = per_stage(graph, "stage-0")
    assert classic.files == {}
    argv = json.loads(classic.text.splitlines()[1].split(" ", 2)[2])
    assert argv[:2] == ["/bin/sh", "-c"] and "printf %s '#!/bin/sh\necho it'\"'\"'s me\n' > $d/EOF" in argv[2]
    assert writes_files(graph.stages)


@pytest.mark.parametrize("first,argv", [
    ("#!/bin/sh", ["/bin/sh"]), ("#! /usr/bin/env  python3 -u \t", ["/usr/bin/env", "python3 -u"]),
    ("#!/bin/bash\t-e", ["/bin/bash", "-e"]),
])
def test_classic_runs_a_script_as_the_kernel_would(first: str, argv: list[str]) -> None:
    # /dev may be mounted noexec (Podman): the interpreter is run on the script, as the
    # kernel runs a `#!` file (the rest of the line is one argument).
    from invoke_compimg.dockerfile.heredocs import _interpreter

    assert _interpreter(first + "\necho\n") == argv


def test_copy_heredoc_is_a_generated_context_file() -> None:
    text = ("ARG BASEDIR=/srv\nFROM img AS s\nARG GREETING=hello BASEDIR\nENV WHO=world DIR=${BASEDIR}\n"
            "COPY --chown=1:2 local.txt <<EOT <<'RAW' /dest/\n$GREETING, ${WHO}! $DIR $HOME \\$ \\n \"q\"\n"
            "EOT\n$GREETING\nRAW\nCOPY --from=img /etc/x <<-EOF /dest/\n\t$TARGETARCH\n\tEOF\n")
    graph = parse_text(text)
    lowered = per_stage(graph, "s", context_prefix="ctx/", build_args={"GREETING": "hi"},
                        image_config=lambda ref: {"Env": ["HOME=/root", "PATH=/bin"]})
    paths = list(lowered.files)
    assert [(lowered.files[p].data, lowered.files[p].mode) for p in paths] == [
        (b'hi, world! /srv /root $ n "q"\n', 0o644), (b"$GREETING\n", 0o644), (b"\n", 0o644)]
    assert all(p.startswith(INLINE_FOLDER + "/") for p in paths)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["EOT", "RAW", "EOF"]
    body = lowered.text.splitlines()
    assert f"COPY --chown=1:2 ctx/local.txt {paths[0]} {paths[1]} /dest/" in body
    # With --from the paths come from the image; the heredoc file is a COPY of its own.
    assert "COPY --from=img /etc/x /dest/" in body and f"COPY {paths[2]} /dest/" in body
    # A changed body is a changed line (so reuse and BuildKit's cache see the change).
    other = per_stage(graph, "s", context_prefix="ctx/", build_args={"GREETING": "bye"})
    assert other.text != lowered.text


@pytest.mark.parametrize("delimiter,body,content", [
    # After BuildKit's own heredoc tests: an unquoted delimiter processes backslashes and
    # variables (quotes are not special, so '${name}' expands too); a quoted one keeps all.
    ("EOF", "\\\n", "\n"), ("EOF", "\\\\\n", "\\\n"), ("EOF", "\\$\n", "$\n"),
    ('"EOF"', "\\\n", "\\\n"), ('"EOF"', "\\$\n", "\\$\n"),
    ("EOF", "Hello '${name}'!\n", "Hello 'world'!\n"), ("EOF", 'Hello "${name}"!\n', 'Hello "world"!\n'),
    ("'EOF'", "Hello ${name}!\n", "Hello ${name}!\n"), ("EOF", '"quotes"\n', '"quotes"\n'),
])
def test_copy_heredoc_expansion_as_buildkit(delimiter: str, body: str, content: str) -> None:
    text = f"FROM busybox\nARG name=world\nCOPY <<{delimiter} /f\n{body}EOF\n"
    [file] = per_stage(parse_text(text), "stage-0").files.values()
    assert file.data.decode() == content


def test_platform_args_in_a_copy_heredoc() -> None:
    text = "FROM img\nARG TARGETARCH\nCOPY <<EOF /arch\n$TARGETARCH\nEOF\n"
    [file] = per_stage(parse_text(text), "stage-0").files.values()
    assert file.data == b"amd64\n"


def test_archive_holds_the_generated_files(tmp_path: Path) -> None:
    (tmp_path / "local.txt").write_text("mine\n")
    graph = parse_text("FROM busybox\nCOPY local.txt <<EOT /d/\nhere\nEOT\n")
    lowered = multi_stage(graph, context_prefix="ctx/")
    with archive(str(tmp_path), lowered.text, ["local.txt"], prefix="ctx/", files=lowered.files) as tar_file, \
            tarfile.open(fileobj=tar_file) as tar:
        members = {m.name: m for m in tar.getmembers()}
        [generated] = lowered.files
        assert members[generated].mode == 0o644 and members[generated].uid == 0
        assert tar.extractfile(members[generated]).read() == b"here\n"  # type: ignore[union-attr]
        assert "ctx/local.txt" in members and not any(n.startswith("ctx/" + INLINE_FOLDER) for n in members)


# --- end to end, both builders -----------------------------------------------------------
HEREDOC = """\
FROM busybox AS base
ARG GREETING=hello
ENV WHO=world
RUN <<EOF
mkdir -p /out
echo "$GREETING" > /out/run-simple
EOF
RUN <<-EOF
\techo tabs > /out/run-chomp
\tEOF
RUN cat > /out/run-stdin <<EOF
$GREETING from stdin
EOF
RUN cat <<A > /out/two-a && cat <<B > /out/two-b
first
A
second
B
RUN <<EOF
#!/bin/sh
echo "script $1" > /out/run-script
EOF
COPY <<EOT /out/copied
$GREETING, ${WHO}!
EOT
COPY <<'EOT' /out/raw
$GREETING stays
EOT
COPY --chown=12:34 <<EOT <<ALSO /out/dir/
one
EOT
two
ALSO
ADD <<EOF /out/added
added
EOF
COPY note.txt <<EOF /out/mixed/
mixed
EOF
USER 1000
RUN <<EOF
#!/bin/sh
id -u > /tmp/script-uid
EOF
"""

PLAIN = """\
FROM busybox AS base
ARG GREETING=hello
ENV WHO=world
RUN mkdir -p /out && echo "$GREETING" > /out/run-simple
RUN echo tabs > /out/run-chomp
RUN echo "$GREETING from stdin" > /out/run-stdin
RUN echo first > /out/two-a && echo second > /out/two-b
RUN echo "script " > /out/run-script
COPY copied /out/copied
COPY raw /out/raw
COPY --chown=12:34 EOT ALSO /out/dir/
ADD added /out/added
COPY note.txt EOF /out/mixed/
USER 1000
RUN id -u > /tmp/script-uid
"""
PLAIN_FILES = {"copied": "hello, world!\n", "raw": "$GREETING stays\n", "EOT": "one\n", "ALSO": "two\n",
               "added": "added\n", "EOF": "mixed\n", "note.txt": "a note\n"}


def _built(make_project: Any, dockerfile: str, files: dict[str, str], name: str) -> tuple[Any, str]:
    project = make_project(dockerfile, files, name=name)
    for file in files:
        (project.context / file).chmod(0o644)
    return project, Builder(project).build()[project.graph.final.name]


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["classic", "buildkit"], indirect=True)
def test_heredocs_build_the_same_image_as_without(builder: str, make_project: Any, api: Any) -> None:
    _, heredoc = _built(make_project, HEREDOC, {"note.txt": "a note\n"}, "heredoc")
    _, plain = _built(make_project, PLAIN, PLAIN_FILES, "plain")
    assert image_listing(api, heredoc) == image_listing(api, plain)
    assert config_of(api, heredoc) == config_of(api, plain)
    listing = image_listing(api, heredoc, "out")
    assert [(listing[f][2] & 0o7777, *listing[f][3:5]) for f in ("out/dir/EOT", "out/copied")] == [
        (0o644, 12, 34), (0o644, 0, 0)]
    assert not [name for name in image_listing(api, heredoc) if "compimg" in name or name.startswith("dev/pipes")]


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["buildkit"], indirect=True)
def test_copy_heredoc_chmod(builder: str, make_project: Any, api: Any) -> None:
    _, heredoc = _built(make_project, "FROM busybox\nCOPY --chmod=0750 <<EOT /tool\n#!/bin/sh\nEOT\n", {}, "heredoc")
    _, plain = _built(make_project, "FROM busybox\nCOPY --chmod=0750 EOT /tool\n", {"EOT": "#!/bin/sh\n"}, "plain")
    assert image_listing(api, heredoc, "tool") == image_listing(api, plain, "tool")
    assert image_listing(api, heredoc, "tool")["tool"][2] & 0o7777 == 0o750


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["classic", "buildkit"], indirect=True)
def test_run_heredoc_history_is_buildkits(builder: str, make_project: Any, api: Any) -> None:
    """The history entry of a RUN heredoc is what BuildKit with Dockerfile 1.4 records: the
    shell and the body as one argument (`RUN /bin/sh -c <body> # buildkit`)."""
    _, image = _built(make_project, "FROM busybox\nRUN <<EOF\necho hi > /x\necho there >> /x\nEOF\n", {}, "heredoc")
    created_by = api.history(image)[0]["CreatedBy"]
    body = "echo hi > /x\necho there >> /x\n"
    assert created_by == (f"RUN /bin/sh -c {body} # buildkit" if builder == "buildkit" else f"/bin/sh -c {body}")


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["classic", "buildkit"], indirect=True)
def test_copy_dot_never_sees_the_generated_files(builder: str, make_project: Any, api: Any) -> None:
    text = "FROM busybox\nCOPY . /app/\nCOPY <<EOT /app/generated\nx\nEOT\n"
    _, image = _built(make_project, text, {"mine.txt": "mine\n", "sub/deeper.txt": "deeper\n"}, "heredoc")
    assert sorted(image_listing(api, image, "app")) == [
        "app", "app/Dockerfile", "app/generated", "app/mine.txt", "app/sub", "app/sub/deeper.txt"]


@pytest.mark.engine
@pytest.mark.parametrize("builder", ["classic", "buildkit"], indirect=True)
def test_failing_heredoc_script_is_the_users_line(builder: str, make_project: Any) -> None:
    project = make_project("FROM busybox\nRUN true\nRUN <<EOF\n#!/bin/sh\necho failing\nexit 3\nEOF\n", {})
    out = io.StringIO()
    with pytest.raises(UserError) as caught:
        Builder(project, out=out).build()
    assert ":3: " in str(caught.value) and "RUN <<EOF" in str(caught.value)
    assert "failing" in out.getvalue()


def test_native_format_keeps_heredocs_as_written() -> None:
    from invoke_compimg.dockerfile import render

    text = "NAME build\nFROM busybox\nRUN <<-EOF\n\techo hi\n\tEOF\nCOPY <<EOT /x\nbody\nEOT\nCMD [\"sh\"]\n"
    native = render.as_native(parse_text(text))
    assert native == "FROM busybox AS build\nRUN <<-EOF\n\techo hi\nEOF\nCOPY <<EOT /x\nbody\nEOT\nCMD [\"sh\"]\n"
    again = parse_text(native)
    assert [i.heredocs for i in again.final.instructions] == [i.heredocs for i in parse_text(text).final.instructions]
    lowered = multi_stage(parse_text(text), keep_heredocs=True)
    assert [lowered.lines[n].source.line for n in sorted(lowered.lines)] == [2, 3, 3, 3, 6, 6, 6, 9]



@pytest.mark.engine
@pytest.mark.parametrize("builder", ["classic", "buildkit"], indirect=True)
def test_a_copy_heredocs_file_is_dated_when_the_dockerfile_was_written(builder: str, make_project: Any,
                                                                       api: Any) -> None:
    """Not 1970, not the 22nd century: the second the Dockerfile was written (a file of the
    user's gets its own time in the image too)."""
    import os

    project = make_project("FROM busybox\nCOPY <<EOT /f\nhello\nEOT\n", {}, name="dated")
    os.utime(project.dockerfile, (1_700_000_000.5, 1_700_000_000.5))
    image = Builder(project).build()[project.graph.final.name]
    assert run_image(api, image, ["stat", "-c", "%Y", "/f"]) == (0, "1700000000\n")
