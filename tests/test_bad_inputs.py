"""The bad-input corpus: every mistake is one `Dockerfile:LINE: what; what to do` line,
raised as invoke's Exit with status 1, without touching an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from invoke_compimg.dockerfile.parse import parse_file, parse_text
from invoke_compimg.errors import UserError

SEED = "NAME build\nFROM golang:1.19\nRUN true\n"

# (id, Dockerfile text, line, part of the message)
CORPUS: list[tuple[str, str, int, str]] = [
    ("empty", "", 1, "no instructions"),
    ("only-blank-lines", "\n\n   \n", 1, "no instructions"),
    ("only-comments", "# hello\n# world\n", 1, "no instructions"),
    ("only-global-arg", "ARG X=1\n", 1, "no FROM"),
    ("run-before-from", "RUN echo hi\nFROM busybox\n", 1, "RUN before any FROM"),
    ("copy-before-from", "# c\nCOPY a b\nFROM busybox\n", 2, "COPY before any FROM"),
    ("name-then-run", "NAME build\nRUN true\n", 1, "NAME build is not followed by FROM"),
    ("name-at-end", "FROM busybox\nNAME late\n", 2, "NAME late is not followed by FROM"),
    ("name-twice", "NAME a\nNAME b\nFROM busybox\n", 1, "NAME a is not followed by FROM"),
    ("name-without-arg", "NAME\nFROM busybox\n", 1, "NAME takes exactly one stage name"),
    ("name-two-words", "NAME a b\nFROM busybox\n", 1, "NAME takes exactly one stage name"),
    ("invalid-name-digit", "NAME 1build\nFROM busybox\n", 1, "invalid stage name '1build'"),
    ("invalid-name-slash", "FROM busybox AS a/b\n", 1, "invalid stage name 'a/b'"),
    ("invalid-name-colon", "NAME a:b\nFROM busybox\n", 1, "invalid stage name 'a:b'"),
    ("invalid-name-too-long", "NAME " + "a" * 129 + "\nFROM busybox\n", 1, "invalid stage name"),
    ("duplicate-name", SEED + "NAME build\nFROM busybox\n", 4, "duplicate stage name 'build' (first on line 1)"),
    ("duplicate-name-case", "FROM busybox AS Build\nFROM busybox AS BUILD\n", 2, "duplicate stage name 'build' (first on line 1)"),
    ("duplicate-native-and-seed", "FROM busybox AS a\nNAME a\nFROM busybox\n", 2, "duplicate stage name 'a'"),
    ("duplicate-generated-name", "FROM busybox\nFROM busybox AS stage-0\n", 2, "duplicate stage name 'stage-0'"),
    ("task-name-collision", "FROM busybox AS a_b\nFROM busybox AS a.b\n", 2, "would both be task 'a-b'"),
    ("named-twice", "NAME a\nFROM busybox AS b\n", 2, "stage is named twice (NAME a on line 1, AS b)"),
    ("self-copy-seed", SEED + "COPY build:/x /y\n", 4, "stage 'build' refers to itself"),
    ("self-copy-native", SEED + "COPY --from=build /x /y\n", 4, "stage 'build' refers to itself"),
    ("self-copy-index", SEED + "COPY --from=0 /x /y\n", 4, "stage 'stage-0' refers to itself".replace("stage-0", "build")),
    ("forward-copy-seed", "NAME a\nFROM busybox\nCOPY b:/x /y\nNAME b\nFROM busybox\n", 3, "stage 'b' is used before it is defined on line 4"),
    ("forward-copy-native", "FROM busybox AS a\nCOPY --from=b /x /y\nFROM busybox AS b\n", 2, "used before it is defined on line 3"),
    ("forward-from", "FROM b AS a\nFROM busybox AS b\n", 1, "stage 'b' is used before it is defined on line 2"),
    ("forward-index", "FROM busybox\nCOPY --from=1 /x /y\nFROM busybox\n", 2, "used before it is defined"),
    ("unknown-index", "FROM busybox\nFROM busybox\nCOPY --from=7 /x /y\n", 3, "unknown stage index 7; known stages: 0=stage-0, 1=stage-1"),
    ("relative-after-stage", SEED + "NAME run\nFROM busybox\nCOPY build:go/bin/app .\n", 6, "must be absolute; write build:/go/bin/app"),
    ("relative-dot-after-stage", SEED + "FROM busybox\nCOPY build:./app .\n", 5, "must be absolute"),
    ("mixed-sources-file-dest", SEED + "FROM busybox\nCOPY build:/a ./b /dest\n", 5, "needs a directory destination ending in '/'"),
    ("copy-one-word", SEED + "COPY onlyone\n", 4, "COPY needs at least one source and a destination"),
    ("add-one-word", SEED + "ADD x\n", 4, "ADD needs at least one source and a destination"),
    ("from-without-image", "FROM --platform=linux/amd64\n", 1, "FROM takes"),
    ("from-extra-words", "FROM busybox extra words here\n", 1, "FROM takes"),
    ("from-empty-arg", "ARG BASE\nFROM ${BASE}\n", 2, "expands to nothing"),
    ("unknown-instruction", SEED + "RUNN true\n", 4, "unknown instruction RUNN; did you mean RUN?"),
    ("unknown-in-continuation-file", "FROM busybox\nRUN a \\\n  b\nFOO bar\n", 4, "unknown instruction FOO"),
    ("arg-without-name", "ARG\nFROM busybox\n", 1, "ARG requires at least one argument"),
    ("line-too-long", "FROM busybox\nRUN echo " + "x" * 70000 + "\n", 2, "over Docker's 64 KiB limit"),
    ("nul-byte", "FROM busybox\nRUN echo \0\n", 2, "binary content"),
    ("escaped-escape-ends-the-line", "FROM busybox\nENV C a\\\\\nBOGUS b\n", 3, "unknown instruction BOGUS"),
    ("env-without-value", "FROM busybox\nENV PATH\n", 2, "ENV must have two arguments"),
    ("unknown-flag", "FROM busybox\nCOPY --user=me foo /tmp/\n", 2, "unknown flag --user for COPY"),
    ("misspelt-flag", "FROM busybox\nCOPY --chwon=1 a b\n", 2, "did you mean --chown?"),
    ("healthcheck-alone", "FROM busybox\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    ("unknown-after-name", "NAME build\nFROMM busybox\n", 2, "unknown instruction FROMM; did you mean FROM?"),
    ("copy-from-variable", "ARG F=busybox\nFROM busybox\nCOPY --from=$F /a /b\n", 3, "variable expansion is not supported for --from"),
    ("unterminated-heredoc", "FROM busybox\nRUN <<EOF\necho hi\n", 2, "unterminated heredoc <<EOF"),
    ("duplicate-directive", "# escape=`\n# escape=\\\nFROM busybox\n", 2, "only one escape parser directive"),
]


def _ids() -> list[str]:
    return [case[0] for case in CORPUS]


@pytest.mark.parametrize("name,text,line,message", CORPUS, ids=_ids())
def test_bad_input_is_one_clear_line(name: str, text: str, line: int, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_text(text, "Dockerfile")
    error = caught.value
    assert error.code == 1
    assert error.line == line, str(error)
    assert message in str(error)
    assert str(error).startswith(f"Dockerfile:{line}: ")
    assert "\n" not in str(error)
    assert "; " in str(error), "every message says what to do"


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) + len(FILE_CASES) >= 30
    assert len(set(_ids())) == len(CORPUS)


def _write(tmp: Path, data: bytes) -> Path:
    path = tmp / "Dockerfile"
    path.write_bytes(data)
    return path


FILE_CASES = ["missing", "directory", "unreadable", "not-utf8", "binary"]


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_files(case: str, tmp_path: Path) -> None:
    if case == "missing":
        path, line, message = tmp_path / "nope", None, "no such file"
    elif case == "directory":
        path, line, message = tmp_path, None, "is a directory"
    elif case == "unreadable":
        path = _write(tmp_path, b"FROM busybox\n")
        path.chmod(0)
        import os

        if os.geteuid() == 0:  # root reads anything: make it unreadable another way
            path.unlink()
            path.mkdir()
            (path / "x").touch()
            message = "is a directory"
        else:
            message = "cannot read it"
        line = None
    elif case == "not-utf8":
        path, line, message = _write(tmp_path, b"FROM busybox\n\nRUN echo \xff\xfe\n"), 3, "not valid UTF-8"
    else:
        path, line, message = _write(tmp_path, b"FROM busybox\n\x00\x01\x02\x03"), 2, "binary content"
    with pytest.raises(UserError) as caught:
        parse_file(path)
    assert caught.value.code == 1
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))


# `COPY name:/abs/path` whose name is within two edits of a stage: a typo, unless the context
# really has that path. The parser is told what the context holds (`in_context`).
MISSPELT = "NAME build\nFROM busybox\nRUN echo hi > /x\nNAME run\nFROM busybox\nCOPY {source} /x\n"


@pytest.mark.parametrize("source", ["buidl:/x", "Biuld:/x", "bui:/x", "builds:/x"])
def test_misspelt_stage_name_is_a_parse_error(source: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_text(MISSPELT.format(source=source), "Dockerfile", in_context=lambda path: False)
    message = str(caught.value)
    assert message.startswith(f"Dockerfile:6: '{source}' is not in the build context")
    assert "did you mean stage 'build'? (write build:/x)" in message and "\n" not in message
    assert caught.value.code == 1


def test_misspelt_stage_name_that_is_a_context_path_is_fine(tmp_path: Path) -> None:
    text = MISSPELT.format(source="buidl:/x")
    parse_text(text, "Dockerfile")  # no context given: nothing to check against
    parse_text(text, "Dockerfile", in_context=lambda path: path == "buidl:/x")
    # Far from every stage name: a context path, as Docker reads it.
    parse_text(MISSPELT.format(source="vendor:/x"), "Dockerfile", in_context=lambda path: False)
    # Through the file: the context folder is looked at.
    (tmp_path / "Dockerfile").write_text(text)
    with pytest.raises(UserError, match="did you mean stage 'build'"):
        parse_file(tmp_path / "Dockerfile", context=tmp_path)
    (tmp_path / "buidl:").mkdir()
    (tmp_path / "buidl:" / "x").write_text("a file whose name has a colon")
    parse_file(tmp_path / "Dockerfile", context=tmp_path)
    (tmp_path / "Dockerfile").write_text(MISSPELT.format(source="buidl:/*"))
    parse_file(tmp_path / "Dockerfile", context=tmp_path)  # a pattern that matches
