"""Parsing good files: seed and native syntax, the model, graph operations, lowering."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from invoke_compimg.dockerfile import render
from invoke_compimg.dockerfile.lowering import fill_placeholders, multi_stage, per_stage
from invoke_compimg.dockerfile.model import Graph
from invoke_compimg.dockerfile.parse import parse_text
from invoke_compimg.errors import UserError

SEED = (Path(__file__).resolve().parent.parent / "examples/hello-go/Dockerfile").read_text()

NATIVE = """\
FROM golang:1.19 AS build
COPY . .
RUN go build -o /go/bin/app .

FROM busybox AS run
WORKDIR /app
COPY --from=build /go/bin/app .
CMD ["./app"]
"""


def shape(graph: Graph) -> list[tuple[object, ...]]:
    """What must agree between two spellings of one graph."""
    return [(s.name, s.index, s.base, s.base_stage, s.depends_on,
             [(c.stage, c.paths, c.dest) for c in s.copies]) for s in graph.stages]


def test_seed_example() -> None:
    graph = parse_text(SEED)
    assert graph.names == ("build", "run")
    build, run = graph.stages
    assert (build.line, build.base, build.base_stage) == (2, "golang:1.19", False)
    assert run.line == 7 and run.depends_on == ("build",)
    assert [(c.stage, c.paths, c.dest, c.line) for c in run.copies] == [("build", ("/go/bin/app",), ".", 10)]
    assert build.context_sources == (".",) and run.context_sources == ()
    assert graph.final is run


def test_native_parses_to_the_same_graph() -> None:
    assert shape(parse_text(SEED)) == shape(parse_text(NATIVE))


def test_native_output_round_trips() -> None:
    for text in (SEED, NATIVE, MIXED):
        graph = parse_text(text)
        assert shape(parse_text(render.as_native(graph))) == shape(graph)


MIXED = """\
# escape=`
ARG GO=golang:1.19
ARG BASE
NAME tools
FROM ${GO}
RUN mkdir -p /out && echo a > /out/a
from ${BASE:-busybox} as Lib
Copy --chown=1:2 TOOLS:/out/a ./local tools:/out /dst/
FROM lib
COPY --from=0 ["/out/a", "/with space/"]
COPY --from=busybox:latest /bin/sh /sh
RUN echo `
    continued
"""


def test_mixed_syntax_case_args_escape_and_continuations() -> None:
    graph = parse_text(MIXED)
    assert graph.names == ("tools", "lib", "stage-2")
    tools, lib, last = graph.stages
    assert tools.base == "golang:1.19"
    assert lib.base == "busybox" and lib.named and not last.named
    assert lib.depends_on == ("tools",)
    assert [(c.stage, c.paths, c.dest) for c in lib.copies] == [
        ("tools", ("/out/a",), "/dst/"), ("tools", ("/out",), "/dst/")]
    assert lib.context_sources == ("./local",)
    assert last.base_stage and last.depends_on == ("lib", "tools")
    assert graph.escape == "`"
    lowered = per_stage(graph, "lib").text.splitlines()
    assert lowered[0] == "# escape=`"
    assert "COPY --from={{stage:tools}} --chown=1:2 /out/a /dst/" in lowered
    assert "COPY --chown=1:2 ./local /dst/" in lowered
    assert "COPY --from={{stage:tools}} --chown=1:2 /out /dst/" in lowered
    last_lowered = per_stage(graph, "stage-2").text
    assert "FROM {{stage:lib}}" in last_lowered
    assert 'COPY --from={{stage:tools}} ["/out/a", "/with space/"]' in last_lowered
    assert "COPY --from=busybox:latest /bin/sh /sh" in last_lowered
    assert "RUN echo     continued" in last_lowered


def test_build_arg_changes_from() -> None:
    graph = parse_text(MIXED, build_args={"BASE": "tools"})
    assert graph.stage("lib").base_stage and graph.stage("lib").base == "tools"


def test_stage_source_only_when_prefix_names_a_stage() -> None:
    graph = parse_text("FROM busybox AS a\nFROM busybox\nCOPY c:/x a:/y /d/\n")
    last = graph.final
    assert [(c.stage, c.paths) for c in last.copies] == [("a", ("/y",))]
    assert last.context_sources == ("c:/x",)


def test_from_same_name_is_an_image() -> None:
    graph = parse_text("FROM busybox AS busybox\nRUN true\n")
    assert graph.final.base == "busybox" and not graph.final.base_stage


def test_graph_operations() -> None:
    text = "\n".join([
        "FROM busybox AS a", "FROM busybox AS b", "FROM busybox AS broken", "RUN false",
        "FROM busybox AS c", "COPY a:/x b:/y /z/",
        "FROM c AS d", "COPY --from=a /x /w",
    ]) + "\n"
    graph = parse_text(text)
    assert [s.name for s in graph.needs("d")] == ["a", "b", "c", "d"]
    assert [s.name for s in graph.needs("c")] == ["a", "b", "c"]
    assert [s.name for s in graph.needs("a")] == ["a"]
    assert graph.stage("d").depends_on == ("c", "a")


def test_fill_placeholders() -> None:
    graph = parse_text(SEED)
    text = fill_placeholders(per_stage(graph, "run").text, {"build": "sha256:" + "a" * 64})
    assert f"COPY --from=sha256:{'a' * 64} /go/bin/app ." in text


def test_json_format() -> None:
    data = json.loads(render.as_json(parse_text(SEED)))
    assert data == {
        "final": "run",
        "stages": [
            {"name": "build", "line": 2, "base": "golang:1.19", "depends_on": [], "copies": []},
            {"name": "run", "line": 7, "base": "busybox", "depends_on": ["build"],
             "copies": [{"from": "build", "src": ["/go/bin/app"], "dest": ".", "line": 10}]},
        ],
    }


def test_text_dot_mermaid() -> None:
    graph = parse_text(SEED)
    text = render.as_text(graph)
    assert "run  line 7  FROM busybox  (final)" in text
    assert "line 10: COPY build:/go/bin/app -> ." in text
    assert '"build" -> "run" [label="/go/bin/app"];' in render.as_dot(graph)
    assert 's_build -->|"/go/bin/app"| s_run' in render.as_mermaid(graph)


# --- property: random instruction sequences give a graph or our own error ---------------
WORDS = st.sampled_from([
    "a", "b", "build", "run", "Stage-1", "busybox", "golang:1.19", "a:/x", "b:/y", "build:rel",
    "/abs", ".", "./x", "--from=a", "--from=0", "--from=9", "--chown=1:1", "--chmod=755",
    "AS", "as", "${X}", "$Y", "[", "]", '["/a", "/b"]', "\\", "`", "#", "=", "x=1", "", "é",
    "<<EOF", "<<-'E F'", '<<"X"', "3<<EOF", "EOF", "X", "#!/bin/sh", "${X:?}", "${", "'", '"', "--link",
    "--mount=type=bind,from=a", "--network=none", "NONE", "CMD", "--interval=1s", "<<'EOF", "\t",
])
KEYWORDS = st.sampled_from([
    "NAME", "FROM", "COPY", "ADD", "RUN", "ARG", "ENV", "WORKDIR", "CMD", "copy", "from",
    "name", "LABEL", "ONBUILD", "BOGUS", "#", "", "# escape=`", "HEALTHCHECK", "SHELL", "EOF",
    "ONBUILD RUN", "# syntax=x", "USER", "EXPOSE", "VOLUME", "ENTRYPOINT", "STOPSIGNAL", "MAINTAINER",
])
LINES = st.builds(lambda k, ws: (k + " " + " ".join(ws)).rstrip(), KEYWORDS, st.lists(WORDS, max_size=5))


@settings(max_examples=400, deadline=None)
@given(st.lists(LINES, max_size=14))
def test_random_files_parse_or_fail_cleanly(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        graph = parse_text(text)
    except UserError as exc:
        assert exc.code == 1 and "\n" not in str(exc) and str(exc).startswith("Dockerfile:")
        return
    assert graph.stages
    for stage in graph.stages:
        assert all(graph.stage(d).index < stage.index for d in stage.depends_on)
        per_stage(graph, stage.name)
        multi_stage(graph, graph.needs(stage.name))
    render.as_native(graph)


# Any text at all: a graph (that lowers) or our own one-line error, never a traceback.
PIECES = st.sampled_from([*"FROMCPYRUNAShz \t\n\\`#$={}[]\"'<-:/!0é\r", "FROM a\n", "RUN ", "COPY ", "<<EOF",
                          "\nEOF\n", "ONBUILD ", "ENV ", "--from=", "${", "#!/bin/sh\n", "# escape=`\n"])
TEXT = st.lists(PIECES, max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        graph = parse_text(text)
    except UserError as exc:
        assert exc.code == 1 and "\n" not in str(exc) and str(exc).startswith("Dockerfile:")
        return
    for stage in graph.stages:
        try:
            per_stage(graph, stage.name)
            multi_stage(graph, graph.needs(stage.name))
        except UserError as exc:  # a heredoc body BuildKit could not expand either
            assert "\n" not in str(exc) and str(exc).startswith("Dockerfile:")


def test_onbuild_stage_reference_is_a_prerequisite_of_stages_built_on_it() -> None:
    graph = parse_text("FROM busybox AS src\nRUN echo hi > /file\nFROM busybox AS base\n"
                       "ONBUILD COPY --from=src /file /foo\nFROM base\nRUN cat /foo\n")
    assert graph.stage("base").depends_on == ("src",)  # the classic builder stores src's image ID
    assert graph.stage("stage-2").depends_on == ("base", "src")
    assert [s.name for s in graph.needs()] == ["src", "base", "stage-2"]
    # Docker runs triggers in the direct children only.
    grandchild = parse_text("FROM busybox AS src\nFROM busybox AS base\nONBUILD COPY --from=src /f /f\n"
                            "FROM base AS child\nFROM child\n")
    assert grandchild.stage("stage-3").depends_on == ("child",)
