"""The parser reads lines, flags and keywords as BuildKit does: one test per reproducer
(each was read differently before), with BuildKit's verdict (checked against the engine's
own BuildKit) in the test. No engine."""

from __future__ import annotations

import pytest

from invoke_compimg.dockerfile import instructions
from invoke_compimg.dockerfile.lowering import multi_stage, per_stage
from invoke_compimg.dockerfile.model import Platform, Platforms, Run
from invoke_compimg.dockerfile.parse import parse_text
from invoke_compimg.errors import UserError


def refused(text: str) -> str:
    with pytest.raises(UserError) as caught:
        parse_text(text, "Dockerfile")
    message = str(caught.value)
    assert caught.value.code == 1 and "\n" not in message and "; " in message, message
    return message


def runs(text: str) -> list[str]:
    return [i.command for s in parse_text(text).stages for i in s.instructions if isinstance(i, Run)]


# --- 1. reading lines --------------------------------------------------------------------
def test_blank_line_inside_a_continuation_is_skipped() -> None:
    assert runs("FROM scratch\nRUN foo \\\n\nbar\n") == ["foo bar"]  # BuildKit runs `foo bar`


def test_comment_then_blank_line_inside_a_continuation() -> None:
    assert runs("FROM scratch\nRUN echo hello \\\n# a comment\n\nworld\n") == ["echo hello world"]


@pytest.mark.parametrize("end", ["", "\n"])
def test_continuation_at_the_end_of_the_file_keeps_the_instruction(end: str) -> None:
    assert runs("FROM scratch\nRUN something \\" + end) == ["something"]


def test_escaped_backslash_at_the_end_does_not_continue() -> None:
    # BuildKit: `line 3: unknown instruction: BOGUS` (the ENV line is not continued).
    assert refused("FROM scratch\nENV C a\\\\\nBOGUS b\n").startswith("Dockerfile:3: unknown instruction BOGUS")
    graph = parse_text("FROM scratch\nENV C a\\\\\nENV D b\n")
    assert [i.text for i in graph.final.instructions[1:]] == ["ENV C a\\\\", "ENV D b"]


def test_env_without_a_value() -> None:
    assert refused("FROM scratch\nENV PATH\n").startswith("Dockerfile:2: ENV must have two arguments")


def test_unknown_flag() -> None:
    message = refused("FROM scratch\nCOPY --user=me foo /tmp/\n")
    assert message.startswith("Dockerfile:2: unknown flag --user for COPY; COPY takes --chown, --from")


def test_healthcheck_without_arguments() -> None:
    assert refused("FROM scratch\nHEALTHCHECK\n").startswith("Dockerfile:2: HEALTHCHECK requires at least one argument")


def test_platform_args_are_known_in_from() -> None:
    graph = parse_text("FROM scratch AS linux\nFROM ${TARGETOS} AS target\n")
    assert graph.stage("target").base_stage and graph.stage("target").base == "linux"
    # Their values come from the platforms the parser is given (default linux/amd64 for both).
    other = Platforms(target=Platform.parse("windows/arm64"), build=Platform.parse("linux/arm/v7"))
    graph = parse_text("FROM scratch AS linux\nFROM ${TARGETOS} AS target\n"
                       "FROM busybox:${TARGETARCH}-${BUILDARCH}${BUILDVARIANT} AS tools\n", platforms=other)
    assert not graph.stage("target").base_stage and graph.stage("target").base == "windows"
    assert graph.stage("tools").base == "busybox:arm64-armv7"
    assert graph.platforms == other
    # A build arg overrides one, as with docker build.
    assert parse_text("FROM ${TARGETOS:-x}\n", build_args={"TARGETOS": "plan9"}).final.base == "plan9"


def test_platform_args_values() -> None:
    assert Platforms().args() == {
        "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": "",
        "TARGETPLATFORM": "linux/amd64", "TARGETOS": "linux", "TARGETARCH": "amd64", "TARGETVARIANT": "",
    }
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    with pytest.raises(ValueError):
        Platform.parse("linux")


def test_classic_lowering_expands_platform_args_it_does_not_know() -> None:
    # The classic builder defines no BUILDPLATFORM (`FROM --platform=$BUILDPLATFORM` fails
    # there with an empty platform): it is sent expanded. BuildKit gets the line as written.
    text = "FROM --platform=$BUILDPLATFORM busybox:${TARGETARCH} AS build\nRUN true\n"
    graph = parse_text(text)
    assert per_stage(graph, "build").text == "FROM --platform=linux/amd64 busybox:amd64\nRUN true\n"
    assert "FROM --platform=$BUILDPLATFORM busybox:${TARGETARCH} AS build" in multi_stage(graph).text


# --- 2. flags per keyword, one parse function per keyword ---------------------------------
def test_misspelt_flag_is_refused_at_its_line_with_a_suggestion() -> None:
    assert refused("FROM scratch\n\nCOPY --chwon=1 a b\n") == \
        "Dockerfile:3: unknown flag --chwon for COPY; did you mean --chown?"


ACCEPTED = [
    "COPY --from=busybox --chown=1:2 --chmod=644 --link --exclude=*.md --exclude=x --parents a /b/",
    "ADD --chown=1 --chmod=600 --link=false --keep-git-dir --checksum=sha256:00 --unpack=true --exclude=y a /b/",
    "RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none --security=sandbox "
    "--device=name=x true",
    "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=1s --retries=3 CMD true",
    "HEALTHCHECK --whatever NONE",  # BuildKit reads no flags for NONE
    "ARG --whatever NAME",  # nor for ARG
    "STOPSIGNAL --whatever SIGTERM",  # nor for STOPSIGNAL
]


@pytest.mark.parametrize("line", ACCEPTED)
def test_flags_each_keyword_declares(line: str) -> None:
    parse_text(f"FROM --platform=linux/amd64 busybox\n{line}\n")


REFUSED = [
    ("COPY --chmdo=1 a b", "unknown flag --chmdo for COPY; did you mean --chmod?"),
    ("ADD --from=x a b", "unknown flag --from for ADD; ADD takes --chown"),
    ("RUN --mout=type=cache,target=/c true", "unknown flag --mout for RUN; did you mean --mount?"),
    ("RUN --network=bridge true", "invalid network mode 'bridge' for RUN --network"),
    ("RUN --security=root true", "security 'root' is not valid"),
    ("RUN --mount=type=cahce,target=/c true", "--mount type 'cahce' is unknown; did you mean cache?"),
    ("HEALTHCHECK --intervall=3s CMD true", "did you mean --interval?"),
    ("HEALTHCHECK --interval=3 CMD true", "--interval=3 is not a duration"),
    ("HEALTHCHECK --interval=10us CMD true", "not a duration of at least 1ms"),
    ("HEALTHCHECK --retries=-1 CMD true", "--retries cannot be negative"),
    ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
    ("ENV --x=1 A=b", "unknown flag --x: ENV takes no flags"),
    ("WORKDIR --parents /x", "unknown flag --parents: WORKDIR takes no flags"),
    ("COPY --from=a --from=b x y", "--from is given twice to COPY"),
    ("COPY --chown a b", "--chown needs a value"),
    ("COPY --link=maybe a b", "--link takes true or false, not 'maybe'"),
    ("SHELL /bin/bash -c", "SHELL requires the arguments to be in JSON form"),
    ("USER", "USER requires exactly one argument"),
    ("EXPOSE", "EXPOSE requires at least one argument"),
    ("VOLUME [\"\"]", "VOLUME specified can not be an empty string"),
    ("ONBUILD", "ONBUILD requires at least one argument"),
    ("ONBUILD COPY --chwon=1 a b", "unknown flag --chwon for COPY; did you mean --chown?"),
    ("CMD [1, 2]", "arrays must be comprised of strings only"),
]


@pytest.mark.parametrize("line,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_flags_and_arguments_refused_at_their_line(line: str, message: str) -> None:
    assert refused(f"FROM busybox\n{line}\n").startswith("Dockerfile:2: ")
    assert message in refused(f"FROM busybox\n{line}\n")


def test_from_platform_flag_is_checked() -> None:
    assert "did you mean --platform?" in refused("FROM --plattform=linux/amd64 busybox\n")


def test_every_keyword_has_its_parse_function() -> None:
    assert set(instructions.PARSERS) == set(instructions.DOCKER_KEYWORDS) | {"NAME"}


def test_unknown_instruction_is_reported_at_its_own_line() -> None:
    # Not as "NAME build is not followed by FROM" at line 1.
    assert refused("NAME build\nFROMM busybox\n") == "Dockerfile:2: unknown instruction FROMM; did you mean FROM?"
    assert refused("FROM busybox\ncopy a b\nworkdri /x\n") == \
        "Dockerfile:3: unknown instruction workdri; did you mean workdir?"
    assert refused("FROM busybox\nFETCH x\n") == \
        "Dockerfile:2: unknown instruction FETCH; use a Dockerfile instruction or NAME"


def test_copy_from_a_variable_is_one_located_line() -> None:
    message = refused("ARG FOO=busybox\nFROM scratch\nCOPY --from=$FOO /bin/sh /x\n")
    assert message.startswith("Dockerfile:3: variable expansion is not supported for --from; define a stage")
    assert "--mount from= does not support variable expansion" in refused(
        "FROM busybox\nRUN --mount=from=${X},target=/x true\n")


def test_syntax_directive_is_recorded() -> None:
    assert parse_text("# syntax=docker/dockerfile:1.4\nFROM busybox\n").syntax == "docker/dockerfile:1.4"
    assert parse_text("# escape=`\n# syntax = example/frontend:1 \nFROM busybox\n").syntax == "example/frontend:1"
    assert parse_text("FROM busybox\n# syntax=docker/dockerfile:1.4\n").syntax is None  # not at the top
    assert "only one syntax parser directive" in refused("# syntax=a\n# syntax=b\nFROM busybox\n")


def test_the_syntax_directive_is_sent_to_buildkit() -> None:
    # BuildKit's built-in frontend hands a file with `# syntax=` to that frontend: it must be in
    # the file sent (the classic builder knows no frontends: not there).
    graph = parse_text("# syntax=docker/dockerfile:1.4\n# escape=`\nFROM busybox\nCOPY --link a /a\n")
    assert multi_stage(graph).text.startswith("# syntax=docker/dockerfile:1.4\n# escape=`\n")
    assert per_stage(graph, "stage-0").text == "# escape=`\nFROM busybox\nCOPY --link a /a\n"


def test_global_args_expand_as_buildkit_does() -> None:
    # A default may use an earlier ARG; an ARG without default or build arg is unset.
    text = "ARG REPO=busy\nARG IMAGE=${REPO}box\nARG UNSET\nFROM ${IMAGE}:${UNSET-latest}\n"
    assert parse_text(text).final.base == "busybox:latest"
    assert parse_text(text, build_args={"UNSET": "1.36"}).final.base == "busybox:1.36"
    assert parse_text("FROM \"busybox\"\n").final.base == "busybox"  # quotes are processed
    assert "cannot expand" in refused("ARG X\nFROM ${X:?unset}\n")


@pytest.mark.parametrize("line,feature", [
    ("RUN --network=none true", "RUN --network"), ("RUN --mount=type=cache,target=/c true", "RUN --mount"),
    ("RUN --security=insecure true", "RUN --security"), ("COPY --link a /b", "COPY --link"),
    ("ADD --checksum=sha256:00 https://example.org/a /b", "ADD --checksum"), ("COPY --chown=1 a /b", None),
    ("COPY --from=busybox /a /b", None),
])
def test_buildkit_only_flags_are_named_for_the_classic_builder(line: str, feature: str | None) -> None:
    from invoke_compimg.dockerfile.model import buildkit_only

    assert buildkit_only(parse_text(f"FROM busybox\n{line}\n").final.instructions[1]) == feature
