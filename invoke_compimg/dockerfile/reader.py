"""Dockerfile text -> nodes (one per instruction), by the rules of BuildKit's parser.

After moby/buildkit `frontend/dockerfile/parser` (parser.go, line_parsers.go,
split_command.go, directives.go), which the engine's own BuildKit runs:
- parser directives (`# escape=`, `# syntax=`, `# check=`) only before anything else;
- a line ending in the escape character continues on the next one, unless that character
  is itself escaped (`a\\\\` ends the line); blank lines and comment lines inside a
  continuation are skipped; a continuation at the end of the file ends the instruction;
- continuation lines keep their leading blanks, and lines are joined as they are;
- leading `--flags` are split off every instruction (quotes and escapes processed, `--`
  ends them), and each keyword's arguments are read its own way (JSON or not, key=value
  pairs, ...) into `Node.args`, as BuildKit's AST holds them;
- RUN, COPY and ADD (also under ONBUILD), when not in JSON form, take here-documents:
  every `<<WORD` on the line reads the following lines up to WORD (`<<-`: tabs stripped
  before comparing), untouched by continuations or comments.

We wrote this rather than use a tokeniser library: dockerfile-parse reads blank and
comment lines inside continuations, a trailing continuation and `\\\\` differently from
BuildKit and has no heredocs. Errors are `UserError`s at the instruction's first line.
"""

from __future__ import annotations

import dataclasses
import json
import re

from ..errors import UserError
from ..records import record
from .lexer import Lex, LexError, parse_words
from .model import Heredoc

# Docker's scanner refuses longer lines (bufio.Scanner's 64 KiB token limit).
MAX_LINE_BYTES = 64 * 1024
_BLANKS = re.compile(r"[\t\v\f\r ]+")  # Go's reWhitespace
_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_HEREDOC = re.compile(r"^(\d*)<<(-?)[\t\n\f\r ]*([^<]*)$")
_HEREDOC_KEYWORDS = frozenset({"add", "copy", "run"})


class NotStringArray(ValueError):
    """A JSON array with something other than strings in it: BuildKit refuses those."""


@record
class Node:
    """One instruction as BuildKit's parser leaves it."""

    keyword: str  # as written
    value: str  # everything after the keyword, as written (trimmed)
    flags: tuple[str, ...]  # leading --flags, quotes and escapes processed
    raw_flags: tuple[str, ...]  # the same flags as written
    rest: str  # what follows the flags (trimmed)
    args: tuple[str, ...]  # the keyword's arguments as BuildKit's AST holds them
    json: bool  # the arguments were a JSON array of strings
    line: int  # 1-based first line
    end: int  # last line (heredoc bodies included)
    heredocs: tuple[Heredoc, ...] = ()
    sub: Node | None = None  # ONBUILD's instruction


@record
class Document:
    nodes: tuple[Node, ...]
    escape: str  # the escape character: `\\` or a backtick
    syntax: str | None  # the `# syntax=` directive's value


def json_array(rest: str) -> list[str] | None:
    """`rest` as a JSON array of strings (BuildKit's exec form), None if it is not JSON;
    NotStringArray for an array holding anything but strings."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise NotStringArray("when using JSON array syntax, arrays must be comprised of strings only; "
                             "quote every element, or write the shell form")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(name)  # Go's JSON has no NaN or Infinity


def heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a word like `<<EOF`, `<<-"EOF"`, `3<<EOF` opens (content empty), or None
    (BuildKit `ParseHeredoc`); LexError for a delimiter that cannot be read."""
    match = _HEREDOC.match(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    words = Lex(skip_unset_env=True).words(rest, {})
    if len(words) != 1:
        return None
    raw = Lex(skip_unset_env=True, raw_quotes=True).words(rest, {})
    if len(raw) != len(words):
        raise LexError(f"internal lexing of heredoc produced inconsistent results: {rest}")

    def quotes(text: str) -> int:
        return text.count("'") + text.count('"')

    return Heredoc(name=words[0], content="", expand=quotes(words[0]) == quotes(raw[0]),
                   chomp=match.group(2) == "-", fd=int(match.group(1) or 0))


def heredocs_on(line: str) -> list[Heredoc]:
    """Every heredoc a line opens, in order (BuildKit `heredocsFromLine`)."""
    try:
        words = Lex(raw_quotes=True, raw_escapes=True, skip_unset_env=True).words(line, {})
    except LexError:
        return []  # BuildKit ignores a line it cannot split here
    found = []
    for word in words:
        heredoc = heredoc_word(word)
        if heredoc is not None:
            found.append(heredoc)
    return found


def extract_flags(text: str, escape: str) -> tuple[str, list[tuple[str, str]]]:
    """Leading `--flag` words of an instruction's arguments (BuildKit
    `extractBuilderFlags`): (the rest, [(flag processed, flag as written)])."""
    flags: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n or not text.startswith("--", pos):
            return text[pos:], flags
        start = pos
        word: list[str] = []
        blank_ok = False
        quote = ""
        while pos < n:
            ch = text[pos]
            if quote:
                if ch == quote:
                    quote = ""
                    pos += 1
                    continue
            elif ch.isspace():
                break
            elif ch in ("'", '"'):
                quote, blank_ok = ch, True
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    break  # an escape at the end is dropped
                pos += 1
                ch = text[pos]
            word.append(ch)
            pos += 1
        processed = "".join(word)
        if processed == "--" and not quote and pos < n:
            return text[pos:], flags
        if processed != "--" and (blank_ok or processed):
            flags.append((processed, text[start:pos]))
        if pos >= n:
            return "", flags


class _LineError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _split_blanks(rest: str) -> list[str]:
    return _BLANKS.split(rest) if rest else []


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    if not rest:
        return [], False
    try:
        array = json_array(rest)
    except NotStringArray as exc:
        raise _LineError(str(exc)) from None
    return (array, True) if array is not None else ([rest], False)


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    try:
        array = json_array(rest)
    except NotStringArray as exc:
        raise _LineError(str(exc)) from None
    return (array, True) if array is not None else (_split_blanks(rest), False)


def _name_values(rest: str, keyword: str, escape: str) -> tuple[list[str], bool]:
    """ENV/LABEL: `KEY value` (old form) or `k=v k2=v2`, as [key, value, "" or "="]..."""
    words = parse_words(rest, escape)
    if not words:
        return [], False
    if "=" not in words[0]:
        parts = _BLANKS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _LineError(f"{keyword} must have two arguments; write `{keyword} name=value`")
        return [parts[0], parts[1], ""], False
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise _LineError(f"can't find = in {word!r}; write each as name=value")
        key, _, value = word.partition("=")
        out += [key, value, "="]
    return out, False


def _healthcheck(rest: str) -> tuple[list[str], bool]:
    parts = re.split(r"\s+", rest, maxsplit=1)
    if not rest:
        return [], False
    command, is_json = _maybe_json(parts[1] if len(parts) > 1 else "")
    return [parts[0], *command], is_json


def _strings(rest: str) -> tuple[list[str], bool]:
    return ([rest] if rest else []), False


def _arguments(keyword: str, rest: str, escape: str) -> tuple[list[str], bool]:
    """A keyword's arguments, the way BuildKit's line parsers read them."""
    kind = keyword.lower()
    if kind in ("add", "copy", "volume"):
        return _maybe_json_list(rest)
    if kind in ("cmd", "entrypoint", "run", "shell"):
        return _maybe_json(rest)
    if kind in ("env", "label"):
        return _name_values(rest, "LABEL" if kind == "label" else "ENV", escape)
    if kind == "arg":
        return parse_words(rest, escape), False
    if kind in ("expose", "from"):
        return _split_blanks(rest), False
    if kind == "healthcheck":
        return _healthcheck(rest)
    if kind in ("maintainer", "stopsignal", "user", "workdir"):
        return _strings(rest)
    return [], False  # ONBUILD is read by `_node`; unknown keywords keep no arguments


def _node(line: str, escape: str, start: int) -> Node:
    parts = _BLANKS.split(line.strip(), maxsplit=1)
    keyword = parts[0]
    value = parts[1].strip() if len(parts) > 1 else ""
    rest, flags = extract_flags(value, escape) if value else ("", [])
    rest = rest.strip()
    sub = None
    if keyword.lower() == "onbuild":
        sub = _node(rest, escape, start) if rest else None
        args = [sub.keyword, *sub.args] if sub else []
        is_json = False
    else:
        args, is_json = _arguments(keyword, rest, escape)
    return Node(keyword=keyword, value=value, flags=tuple(f for f, _ in flags),
                raw_flags=tuple(r for _, r in flags), rest=rest, args=tuple(args), json=is_json,
                line=start, end=start, sub=sub)


def _takes_heredocs(node: Node) -> bool:
    target = node.sub if node.keyword.lower() == "onbuild" and node.sub else node
    return target.keyword.lower() in _HEREDOC_KEYWORDS and not target.json


class _Directives:
    """`# key=value` lines at the very top (BuildKit `DirectiveParser`)."""

    def __init__(self) -> None:
        self.done = False
        self.seen: dict[str, str] = {}

    def read(self, line: str) -> str | None:
        """The escape character if this line sets it; marks the end of the directives."""
        if self.done:
            return None
        if not line.startswith("#"):
            self.done = True
            return None
        match = _DIRECTIVE.match(line[1:].lstrip())
        if not match or match.group(1).lower() not in _DIRECTIVES:
            self.done = True
            return None
        key = match.group(1).lower()
        if key in self.seen:
            raise _LineError(f"only one {key} parser directive can be used; keep one")
        self.seen[key] = match.group(2)
        if key == "escape":
            if match.group(2) not in ("\\", "`"):
                raise _LineError(f"invalid escape token '{match.group(2)}'; use ` or \\")
            return match.group(2)
        return None


def _continuation(escape: str) -> re.Pattern[str]:
    """A line ending in `escape` (blanks after it allowed) that is not itself escaped."""
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _is_comment(raw: str) -> bool:
    return raw.lstrip().startswith("#")


class _Reader:
    """Walks the lines once, as BuildKit's `Parse` loop does."""

    def __init__(self, text: str, where: str) -> None:
        parts = text.split("\n")  # lines keep their newline, as Go's scanner gives them
        self.lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        self.where = where
        self.index = 0  # the next line to read; also the 1-based number of the last one read
        self.directives = _Directives()
        self.escape = "\\"
        self.continued = _continuation(self.escape)

    def fail(self, message: str, line: int) -> UserError:
        return UserError(message, where=self.where, line=line)

    def next_line(self) -> str:
        self.index += 1
        return self.lines[self.index - 1]

    def processed(self, raw: str, strip: bool) -> str:
        """The line without its newline (and leading blanks), "" for a comment; parser
        directives are read on the way."""
        token = raw.rstrip("\r\n")
        if strip:
            token = token.lstrip()
        try:
            escape = self.directives.read(token)
        except _LineError as exc:
            raise self.fail(exc.message, self.index) from None
        if escape:
            self.escape, self.continued = escape, _continuation(escape)
        return "" if _is_comment(token) else token

    def trim(self, token: str) -> tuple[str, bool]:
        """The line without its continuation character, and whether the instruction ends."""
        if self.continued.search(token):
            return self.continued.sub(r"\1", token, count=1), False
        return token, True

    def instruction(self) -> tuple[str, int] | None:
        """The next instruction's joined line and first line number; None at the end."""
        while self.index < len(self.lines):
            token, ended = self.trim(self.processed(self.next_line(), True))
            if ended and not token:
                continue
            start, pieces = self.index, [token]
            while not ended and self.index < len(self.lines):
                raw = self.next_line()
                token = self.processed(raw, False)
                if _is_comment(raw) or not token.strip():
                    continue  # comments and blank lines inside a continuation are skipped
                token, ended = self.trim(token)
                pieces.append(token)
            return "".join(pieces), start
        return None

    def bodies(self, line: str, start: int) -> tuple[Heredoc, ...]:
        """The bodies of the heredocs `line` opens, read from the lines that follow."""
        try:
            opened = heredocs_on(line)
        except LexError as exc:
            raise self.fail(f"cannot read the heredoc delimiter ({exc}); close its quotes", start) from None
        found = []
        for heredoc in opened:
            body: list[str] = []
            while True:
                if self.index >= len(self.lines):
                    raise self.fail(f"unterminated heredoc <<{heredoc.name}; end it with a line `{heredoc.name}`",
                                    start)
                raw = self.next_line()
                candidate = raw.rstrip("\r\n")
                if (candidate.lstrip("\t") if heredoc.chomp else candidate) == heredoc.name:
                    break
                body.append(raw)
            found.append(dataclasses.replace(heredoc, content="".join(body)))
        return tuple(found)

    def document(self) -> Document:
        nodes: list[Node] = []
        while (found := self.instruction()) is not None:
            line, start = found
            try:
                node = _node(line, self.escape, start)
            except _LineError as exc:
                raise self.fail(exc.message, start) from None
            heredocs = self.bodies(line, start) if "<<" in line and _takes_heredocs(node) else ()
            nodes.append(dataclasses.replace(node, end=self.index, heredocs=heredocs))
        if not nodes:
            raise self.fail("no instructions (empty or only comments); add a FROM (and NAME) for each stage", 1)
        return Document(tuple(nodes), self.escape, self.directives.seen.get("syntax"))


def read(text: str, where: str = "Dockerfile") -> Document:
    """Split Dockerfile text into nodes; UserError (`where:LINE: ...`) for what BuildKit's
    parser refuses."""
    return _Reader(text, where).document()
