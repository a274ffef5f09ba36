"""Where we must agree with BuildKit's parser: cases written after what BuildKit's own
parser test files show (frontend/dockerfile/parser/testfiles, testfiles-negative and
parser_heredoc_test.go; the texts here are ours). Each case gives what BuildKit's parser
makes of it (per instruction: keyword, flags, arguments, as its `result` files list them)
and whether BuildKit's frontend accepts the file as a whole (its `instructions` package
refuses unknown flags, a bare HEALTHCHECK, ...): `refused` is then (line, part of our
message). No engine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from invoke_compimg.dockerfile.parse import parse_instructions
from invoke_compimg.dockerfile.reader import read
from invoke_compimg.errors import UserError

Node = tuple[str, tuple[str, ...], tuple[str, ...]]  # keyword (lower case), flags, arguments


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    nodes: list[Node] | None  # what the parser makes of it; None: the parser refuses it
    refused: tuple[int, str] | None = None  # (line, message part) if the frontend refuses it


def n(keyword: str, *args: str, flags: tuple[str, ...] = ()) -> Node:
    return (keyword, flags, args)


CASES = [
    # ADD-COPY-with-JSON: tabs separate words, JSON arrays keep blanks inside names.
    Case("tabs-and-json-sources",
         "FROM\tdebian:12\nLABEL\tmaintainer\tAda L. <ada@example.org>\n\nCOPY\t.\t/src/app\n"
         "ADD\t\tsite.tar\t/\nCOPY\t[ \"my notes.txt\", \"/tmp\" ]\nADD\t\t[ \"a file\", \"/tmp/a file\" ]\n",
         [n("from", "debian:12"), n("label", "maintainer", "Ada L. <ada@example.org>", ""),
          n("copy", ".", "/src/app"), n("add", "site.tar", "/"), n("copy", "my notes.txt", "/tmp"),
          n("add", "a file", "/tmp/a file")]),
    # args: ARG words keep their quotes at the parser.
    Case("arg-words",
         "ARG first second=2\nFROM alpine\nARG greeting=\"hi there\" plain\n",
         [n("arg", "first", "second=2"), n("from", "alpine"), n("arg", "greeting=\"hi there\"", "plain")]),
    # brimstone / docker: long continued RUN lines, tabs and blank lines inside them.
    Case("continued-install-line",
         "#escape=\\\nFROM ubuntu:22.04\n\nENV GOPATH /go\n\nRUN apt-get update \\\n"
         "\t&& apt-get install -y git \\\n    && rm -rf /var/lib/apt/lists \\\n\n"
         "\t&& echo $GOPATH\n",
         [n("from", "ubuntu:22.04"), n("env", "GOPATH", "/go", ""),
          n("run", "apt-get update \t&& apt-get install -y git     && rm -rf /var/lib/apt/lists \t&& echo $GOPATH")]),
    # continue-at-eof: a continuation on the last line, no final newline.
    Case("continuation-at-end-of-file", "FROM alpine:3.19\n\nRUN make all \\",
         [n("from", "alpine:3.19"), n("run", "make all")]),
    # continueIndent: continuation lines keep their indentation, blank and comment lines
    # inside a continuation are skipped, blanks after the backslash do not matter.
    Case("continuation-indentation",
         "FROM debian\nRUN printf one\\\n  two\\\nthree\nRUN printf a  \\\n  b\nRUN printf c \\  \nd\n"
         "RUN printf x \\\n \\\n y\nRUN printf start \\\n# a comment\n\n# another, after a blank line\n\nend\n",
         [n("from", "debian"), n("run", "printf one  twothree"), n("run", "printf a    b"),
          n("run", "printf c d"), n("run", "printf x   y"), n("run", "printf start end")]),
    # escape-after-comment: a comment first means no more directives; `\` stays the escape.
    Case("escape-directive-after-a-comment",
         "# a comment first\n# escape = `\n\nFROM image\nENV HOME \\\n\\home\n",
         [n("from", "image"), n("env", "HOME", "\\home", "")]),
    # escape-nonewline and escape: the backtick continues lines; backslashes are plain.
    Case("backtick-escape",
         "# escape = `\n# comments may follow the directive\nFROM image\nENV WINPATH `\nC:\\tools\n",
         [n("from", "image"), n("env", "WINPATH", "C:\\tools", "")]),
    # escape-with-syntax: both directives, the escape then continues FROM.
    Case("syntax-and-escape-directives",
         "# syntax = docker/dockerfile:1\n# escape = `\n\nFROM `\n    image\n",
         [n("from", "image")]),
    # escapes: backslashes are kept as written in the arguments; blank lines in a continuation.
    Case("backslashes-kept",
         "FROM debian\nLABEL author Grace \\\\Hopper <gh@example.org>\\\"\n\nRUN tar \\xf a.tar && \\\n"
         "  echo \\\"done\nADD \\data\\\\\" /d\n\nRUN one \\\n\ntwo \\\n\nthree\n"
         "CMD [ \"\\/bin\\\\\\\"/sh\", \"-c\" ]\n",
         [n("from", "debian"), n("label", "author", "Grace \\\\Hopper <gh@example.org>\\\"", ""),
          n("run", "tar \\xf a.tar &&   echo \\\"done"), n("add", "\\data\\\\\"", "/d"),
          n("run", "one two three"), n("cmd", "/bin\\\"/sh", "-c")]),
    # flags: the parser splits any leading --flag off (`--` ends them); the frontend then
    # refuses a flag the keyword does not declare.
    Case("flags-split-then-refused",
         "FROM scratch\nCOPY a /tmp/\nCOPY --owner=me a /tmp/\nCOPY --try=yes -- a /tmp/\nCOPY -- a /tmp/\n"
         "CMD --verbose [ \"x\", \"y\" ]\nCMD --x -- [ ]\n",
         [n("from", "scratch"), n("copy", "a", "/tmp/"), n("copy", "a", "/tmp/", flags=("--owner=me",)),
          n("copy", "a", "/tmp/", flags=("--try=yes",)), n("copy", "a", "/tmp/"),
          n("cmd", "x", "y", flags=("--verbose",)), n("cmd", flags=("--x",))],
         refused=(3, "unknown flag --owner for COPY")),
    # health: HEALTHCHECK forms as the parser reads them.
    Case("healthcheck-forms",
         "FROM debian\nHEALTHCHECK --interval=10s --retries=2 \\\n  CMD /bin/check --fast\n"
         "HEALTHCHECK   CMD   curl -f localhost\nHEALTHCHECK --timeout=2s CMD [\"probe\"]\nHEALTHCHECK NONE\n"
         "HEALTHCHECK --start-period=0s --start-interval=0s --interval=1m --timeout=0s --retries=0 CMD [\"p\"]\n",
         [n("from", "debian"),
          n("healthcheck", "CMD", "/bin/check --fast", flags=("--interval=10s", "--retries=2")),
          n("healthcheck", "CMD", "curl -f localhost"), n("healthcheck", "CMD", "probe", flags=("--timeout=2s",)),
          n("healthcheck", "NONE"),
          n("healthcheck", "CMD", "p", flags=("--start-period=0s", "--start-interval=0s", "--interval=1m",
                                              "--timeout=0s", "--retries=0"))]),
    Case("healthcheck-without-arguments", "FROM debian\nHEALTHCHECK\n",
         [n("from", "debian"), n("healthcheck")], refused=(2, "HEALTHCHECK requires at least one argument")),
    Case("healthcheck-unknown-type", "FROM debian\nHEALTHCHECK PING 10.0.0.1\n",
         [n("from", "debian"), n("healthcheck", "PING", "10.0.0.1")], refused=(2, "unknown HEALTHCHECK type 'PING'")),
    Case("healthcheck-cmd-without-command", "FROM debian\nHEALTHCHECK CMD\n",
         [n("from", "debian"), n("healthcheck", "CMD")], refused=(2, "missing command after HEALTHCHECK CMD")),
    # json: exec forms, whatever the blanks, with JSON escapes and non-ASCII.
    Case("exec-forms",
         "CMD []\nCMD [\"\"]\nCMD [\"a\"]\nCMD [\"a\",\"b\"]\nCMD [ \"a\", \"b\" ]\nCMD [\t\"a\",\t\"b\"\t]\n"
         "CMD\t[\t\"a\",\t\"b\"\t]\t\nCMD [\"x y\", \"é\", \"\\u2603\", \"\\\" \\\\ \\/ \\t\"]\n",
         [n("cmd"), n("cmd", ""), n("cmd", "a"), n("cmd", "a", "b"), n("cmd", "a", "b"), n("cmd", "a", "b"),
          n("cmd", "a", "b"), n("cmd", "x y", "é", "☃", "\" \\ / \t")]),
    # jeztah-invalid-json-*: what is not a JSON array of strings is the shell form.
    Case("not-json-is-shell-form",
         "CMD \"[\\\"echo\\\", \\\"hi\\\"]\"\nCMD '[\"echo\", \"hi\"]'\nCMD ['echo','hi']\n"
         "CMD [\"echo\", \"no closing bracket\"\nCMD [\"echo\", \"no closing quote]\n",
         [n("cmd", "\"[\\\"echo\\\", \\\"hi\\\"]\""), n("cmd", "'[\"echo\", \"hi\"]'"), n("cmd", "['echo','hi']"),
          n("cmd", "[\"echo\", \"no closing bracket\""), n("cmd", "[\"echo\", \"no closing quote]")]),
    # kartar-entrypoint-oddities: the old `KEY value` form keeps the rest of the line.
    Case("old-key-value-forms",
         "FROM debian\nLABEL maintainer Linus T \"lt@example.org\"\nENV UPDATED_AT 2024-01-31\n"
         "RUN apt-get --no-install-recommends install -y redis\nEXPOSE 6379\nENTRYPOINT [ \"/usr/bin/redis\" ]\n",
         [n("from", "debian"), n("label", "maintainer", "Linus T \"lt@example.org\"", ""),
          n("env", "UPDATED_AT", "2024-01-31", ""), n("run", "apt-get --no-install-recommends install -y redis"),
          n("expose", "6379"), n("entrypoint", "/usr/bin/redis")]),
    # lk4d4-the-edge-case-generator: ONBUILD holds an instruction; comments ending in a
    # backslash continue nothing; many keywords and forms.
    Case("edge-cases",
         "FROM busybox:1.36\n\nONBUILD RUN [\"echo\", \"on build\"]\nONBUILD RUN echo on build\n"
         "ONBUILD COPY . /\n\n# a comment that ends in a backslash \\\n# and another \\\n"
         "RUN [\"ls\", \"-la\"]\nRUN echo '1' && \\\n    echo \"2\"\nRUN    sh -c 'echo x \\\n        > /tmp/x'\n"
         "ENV A 1 B 2\nENV A \"1 B 2\"\nCMD echo 'x' | wc -\nEXPOSE 80 443\nUSER nobody:nogroup\n"
         "VOLUME [\"/v1\", \"/v2\"]\nVOLUME /v3\nWORKDIR /w\nADD . /\nCOPY . copy\n",
         [n("from", "busybox:1.36"), n("onbuild", "RUN", "echo", "on build"), n("onbuild", "RUN", "echo on build"),
          n("onbuild", "COPY", ".", "/"), n("run", "ls", "-la"), n("run", "echo '1' &&     echo \"2\""),
          n("run", "sh -c 'echo x         > /tmp/x'"), n("env", "A", "1 B 2", ""), n("env", "A", "\"1 B 2\"", ""),
          n("cmd", "echo 'x' | wc -"), n("expose", "80", "443"), n("user", "nobody:nogroup"),
          n("volume", "/v1", "/v2"), n("volume", "/v3"), n("workdir", "/w"), n("add", ".", "/"),
          n("copy", ".", "copy")]),
    # multiple-volumes
    Case("several-volumes", "FROM x\n\nVOLUME /data /logs   /cache\n",
         [n("from", "x"), n("volume", "/data", "/logs", "/cache")]),
    # trailing-backslash: an escaped backslash ends the line; a lone backslash line joins.
    Case("escaped-backslash-at-end",
         "FROM scratch\nENV A plain\nENV B two\\\\parts\nENV C ends\\\\with\\\\\nENV D not part of C\n"
         "ENV E hello\\\n\\\nworld\nENV F hello\\\n \\\nworld\n",
         [n("from", "scratch"), n("env", "A", "plain", ""), n("env", "B", "two\\\\parts", ""),
          n("env", "C", "ends\\\\with\\\\", ""), n("env", "D", "not part of C", ""),
          n("env", "E", "helloworld", ""), n("env", "F", "hello world", "")]),
    # env: name=value pairs keep their quotes and escapes at the parser.
    Case("env-pairs",
         "FROM x\nENV k=v\nENV k=v k2=v2\nENV k=\"v w\"\nENV k=v\\ w\nENV k='a\"b'\nENV k=\"a\\\"b\"\n"
         "ENV k=1 \\\n    k2=\"two \\\n       words\" \\\n\tk3=3 \\\n",
         [n("from", "x"), n("env", "k", "v", "="), n("env", "k", "v", "=", "k2", "v2", "="),
          n("env", "k", "\"v w\"", "="), n("env", "k", "v\\ w", "="), n("env", "k", "'a\"b'", "="),
          n("env", "k", "\"a\\\"b\"", "="),
          n("env", "k", "1", "=", "k2", "\"two        words\"", "=", "k3", "3", "=")]),
    Case("env-missing-equals", "FROM x\nENV a=1 b\n", None, refused=(2, "can't find = in 'b'")),
    # testfiles-negative
    Case("empty-file", "", None, refused=(1, "no instructions")),
    Case("env-without-value", "FROM busybox\n\nENV PATH\n", None, refused=(3, "ENV must have two arguments")),
    Case("only-comments", "# one\n# two\n\n", None, refused=(1, "no instructions")),
    Case("nested-json", "CMD [ \"echo\", [ \"nested\" ] ]\n", None,
         refused=(1, "arrays must be comprised of strings only")),
    # parser_heredoc_test.go: which lines take heredocs, and what they read.
    Case("heredoc-lines",
         "FROM alpine\nRUN <<EOF\necho one\nEOF\nUSER <<NOT\nRUN \"<<QUOTED\"\nRUN [\"<<JSON\"]\n"
         "COPY <<A <<B /dest/\nB\nA\nA\nB\n",
         [n("from", "alpine"), n("run", "<<EOF"), n("user", "<<NOT"), n("run", "\"<<QUOTED\""), n("run", "<<JSON"),
          n("copy", "<<A", "<<B", "/dest/")]),
]

HEREDOCS = {
    # line of the instruction -> (name, content, expand, chomp) of each heredoc it reads
    "heredoc-lines": {2: [("EOF", "echo one\n", True, False)],
                      8: [("A", "B\n", True, False), ("B", "A\n", True, False)]},
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parser_agrees_with_buildkit(case: Case) -> None:
    if case.nodes is None:
        with pytest.raises(UserError):
            read(case.text)
    else:
        document = read(case.text)
        got = [(node.keyword.lower(), node.flags, node.args) for node in document.nodes]
        assert got == case.nodes
        for line, expected in HEREDOCS.get(case.name, {}).items():
            node = next(node for node in document.nodes if node.line == line)
            assert [(h.name, h.content, h.expand, h.chomp) for h in node.heredocs] == expected
    if case.refused is None:
        parse_instructions(case.text)
        return
    line, message = case.refused
    with pytest.raises(UserError) as caught:
        parse_instructions(case.text)
    assert caught.value.line == line, str(caught.value)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"Dockerfile:{line}: ") and "\n" not in str(caught.value)


# parser_heredoc_test.go TestParseHeredocHelpers / TestHeredocsFromLine, in our words.
@pytest.mark.parametrize("word,name", [
    ("<<EOF", "EOF"), ("<<'EOF'", "EOF"), ('<<"EOF"', "EOF"), ("<<-EOF", "EOF"), ("<<-'EOF'", "EOF"),
    ('<<-"EOF"', "EOF"), ('<<EO"F"', "EOF"), ("<< EOF", "EOF"), ("<<- EOF", "EOF"), ("3<<EOF", "EOF"),
    ("", None), ("EOF", None), ("<<", None), ("<<-", None), ("<EOF", None), ("<<<EOF", None), ("<<EOF sh", None),
])
def test_heredoc_words(word: str, name: str | None) -> None:
    from invoke_compimg.dockerfile.reader import heredoc_word

    found = heredoc_word(word)
    assert (found.name if found else None) == name


@pytest.mark.parametrize("word", ["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])
def test_heredoc_words_that_cannot_be_read(word: str) -> None:
    from invoke_compimg.dockerfile.lexer import LexError
    from invoke_compimg.dockerfile.reader import heredoc_word

    with pytest.raises(LexError):
        heredoc_word(word)


@pytest.mark.parametrize("line,names", [
    # `<<- EOF` splits into the words `<<-` and `EOF` here, neither a heredoc (BuildKit's own
    # test of this line checks nothing when none is found).
    ("RUN <<EOF", ["EOF"]), ("RUN <<-EOF", ["EOF"]), ("RUN <<- EOF", []), ("RUN << -EOF", ["-EOF"]),
    ("RUN <<'EOF'", ["EOF"]), ("RUN 4<<EOF", ["EOF"]), ("RUN <<EOF <<EOF2", ["EOF", "EOF2"]),
    ("RUN '<<EOF'", []), ('RUN "<<EOF"', []),
])
def test_heredocs_on_a_line(line: str, names: list[str]) -> None:
    from invoke_compimg.dockerfile.reader import heredocs_on

    assert [h.name for h in heredocs_on(line)] == names


# TestParseExtractsHeredoc: names, bodies, whether the body is expanded, `<<-`.
HEREDOC_FILE = """\
FROM alpine:3.19
RUN <<EMPTY
EMPTY
RUN 3<<FD
FD
RUN <<TABS
\tone
\ttwo
TABS
RUN <<-CHOMP
\tthree
\tCHOMP
RUN <<-'QUOTED'
\tno $EXPANSION
QUOTED
RUN <<HASH
# not a comment here
echo x # nor here
HASH
RUN --mount=type=cache,target=/c <<MOUNT
echo cached
MOUNT
RUN <<SCRIPT python3
print('hi')
SCRIPT
RUN <<pa'rt'
echo part
part
RUN <<pa\\'rt
echo escaped
pa'rt
RUN <<'two words'
echo spaced
two words
RUN <<$VAR
$VAR
RUN <<  SPACED  > out
SPACED
"""


def test_heredoc_bodies_as_buildkit_reads_them() -> None:
    nodes = read(HEREDOC_FILE).nodes
    got = [[(h.name, h.content, h.expand, h.chomp, h.fd) for h in node.heredocs] for node in nodes[1:]]
    assert got == [
        [("EMPTY", "", True, False, 0)],
        [("FD", "", True, False, 3)],
        [("TABS", "\tone\n\ttwo\n", True, False, 0)],
        [("CHOMP", "\tthree\n", True, True, 0)],
        [("QUOTED", "\tno $EXPANSION\n", False, True, 0)],
        [("HASH", "# not a comment here\necho x # nor here\n", True, False, 0)],
        [("MOUNT", "echo cached\n", True, False, 0)],
        [("SCRIPT", "print('hi')\n", True, False, 0)],
        [("part", "echo part\n", False, False, 0)],
        [("pa'rt", "echo escaped\n", True, False, 0)],
        [("two words", "echo spaced\n", False, False, 0)],
        [("$VAR", "", True, False, 0)],
        [("SPACED", "", True, False, 0)],
    ]
    assert [node.line for node in nodes] == [1, 2, 4, 6, 10, 13, 16, 20, 23, 26, 29, 32, 35, 37]
