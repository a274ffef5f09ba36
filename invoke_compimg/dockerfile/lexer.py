"""Shell-like words and variable expansion, by the rules of BuildKit's `shell.Lex`.

BuildKit reads a Dockerfile's words with one small lexer in several modes: quotes and
escapes processed or kept (`raw_quotes`, `raw_escapes`), quotes not special at all
(`skip_process_quotes`, for heredoc content), unset variables kept as written
(`skip_unset_env`, for finding heredocs). `$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR-x}`,
`${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`, `${VAR?msg}`, `${VAR#p}`, `${VAR##p}`,
`${VAR%p}`, `${VAR%%p}` and `${VAR/p/r}`, `${VAR//p/r}` expand as there. `<<` keeps
the blanks after it in the same word, so `<< EOF` is one heredoc word.

Also `parse_words`, the parser's own word splitter (quotes kept), used for ENV, LABEL and
ARG, and `declare_args`, the values an ARG instruction gives. Pure functions of their
input; errors are `LexError` with BuildKit's wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from ..records import record

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class LexError(ValueError):
    """A word BuildKit cannot read (an unterminated quote, a bad `${...}`)."""


@record
class Lex:
    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_process_quotes: bool = False
    skip_unset_env: bool = False

    def word(self, text: str, env: Mapping[str, str]) -> str:
        """`text` with its variables expanded and quotes processed, as one word."""
        return _Scan(self, text, env).process()[0]

    def words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """`text` expanded and split into words at unquoted blanks."""
        return _Scan(self, text, env).process()[1]


class _Words:
    """BuildKit's word splitter, quirks included (an empty quoted word makes no word)."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace() and self.in_word:
            if self.buf:
                self.words.append("".join(self.buf))
                self.buf = []
                self.in_word = False
        elif not ch.isspace():
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf = []
            self.in_word = False
        return self.words


class _Scan:
    def __init__(self, lex: Lex, text: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.text = text
        self.pos = 0
        self.env = env
        self.raw_escapes = lex.raw_escapes

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def process(self) -> tuple[str, list[str]]:
        try:
            return self.stop_on("", self.raw_escapes)
        except LexError as exc:
            raise LexError(f"failed to process {self.text!r}: {exc}") from None

    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Read up to `stop` (consumed; "" reads to the end): (the word, its words)."""
        result: list[str] = []
        words = _Words()
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            while self.peek():
                ch = self.peek()
                if stop and ch == stop:
                    self.next()
                    return "".join(result), words.result()
                special = self._special(ch)
                if special is not None:
                    piece = special()
                    result.append(piece)
                    if ch == "$":
                        words.add_string(piece)
                    else:
                        words.add_raw(piece)
                    continue
                ch = self.next()
                if ch == self.lex.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        finally:
            self.raw_escapes = saved
        if stop:
            raise LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def _special(self, ch: str) -> Callable[[], str] | None:
        if ch == "$":
            return self.dollar
        if ch == "<":
            return self.possible_heredoc
        if not self.lex.skip_process_quotes:
            if ch == "'":
                return self.single_quote
            if ch == '"':
                return self.double_quote
        return None

    def single_quote(self) -> str:
        opening = self.next()
        out = [opening] if self.lex.raw_quotes else []
        while True:
            ch = self.next()
            if not ch:
                raise LexError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        opening = self.next()
        out = [opening] if self.lex.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise LexError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue  # an escape at the end of the word is dropped
                if following in ('"', "$", self.lex.escape):
                    ch = self.next()
            out.append(ch)

    def possible_heredoc(self) -> str:
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        blanks = []
        while self.peek() in ("\t", "\r", " "):
            blanks.append(self.next())
        return "<<" + "".join(blanks)

    def name(self) -> str:
        """A variable name: letters, digits, `_`; or digits; or one special parameter."""
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdecimal():
                while self.peek().isdecimal():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            return self.env[name], True
        return "", False

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.lookup(name)
            return "$" + name if not found and self.lex.skip_unset_env else value
        self.next()
        if not self.peek():
            raise LexError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise LexError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            value, found = self.lookup(name)
            return "${" + name + "}" if not found and self.lex.skip_unset_env else value
        if ch == "/":
            return self._replace(name)
        modifier = ch
        null_is_unset = ch == ":"
        if null_is_unset:
            ch = self.next()
            modifier += ch
        elif not ch or ch not in "+-?#%":
            raise LexError(f"unsupported modifier ({modifier}) in substitution")
        trims = ch in ("#", "%")
        if null_is_unset and trims:
            raise LexError(f"unsupported modifier ({modifier}) in substitution")
        word = self._word_until_brace(trims)
        value, found = self.lookup(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        empty = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not found:
                raise LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if empty:
                raise LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if trims:
            greedy = word[:1] == ch
            pattern = word[1:] if greedy else word
            return _trim_suffix(pattern, value, greedy) if ch == "%" else _trim_prefix(pattern, value, greedy)
        raise LexError(f"unsupported modifier ({modifier}) in substitution")

    def _word_until_brace(self, raw: bool) -> str:
        try:
            return self.stop_on("}", raw)[0]
        except LexError:
            if not self.peek():
                raise LexError("syntax error: missing '}'") from None
            raise

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern = self.stop_on("/", True)[0]
        except LexError:
            raise LexError("syntax error: missing '/' in ${}") from None
        replacement = self._word_until_brace(True)
        value, found = self.lookup(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (`*`, `?`, `\\` escapes; no brackets) as a regular expression."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue
            following = pattern[i] if i < len(pattern) else ""
            if following not in ("*", "?", "\\"):
                raise LexError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'")
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.S)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern, keeping each `\\x` escape in front of its character."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i:i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Shortest or longest match at the end: reverse both and trim a prefix.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def parse_words(rest: str, escape: str) -> list[str]:
    """The parser's words (BuildKit `parseWords`): split at unquoted blanks, quotes and
    escapes kept as written, an escape at the very end dropped."""
    words: list[str] = []
    buf: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    i = 0
    n = len(rest)
    while i < n:
        ch = rest[i]
        if not in_word and not quote:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    continue
                buf.append(ch)
                i += 1
                ch = rest[i]
            buf.append(ch)
            i += 1
            continue
        if ch.isspace():
            if blank_ok or buf:
                words.append("".join(buf))
            buf, blank_ok, in_word = [], False, False
            i += 1
            continue
        if ch in ("'", '"'):
            quote = ch
            blank_ok = True
        if ch == escape:
            if i + 1 == n:
                i += 1
                continue
            buf.append(ch)
            i += 1
            ch = rest[i]
        buf.append(ch)
        i += 1
    if (in_word or quote) and (blank_ok or buf):
        words.append("".join(buf))
    return words


def declare_args(pairs: Iterable[tuple[str, str | None]], variables: Mapping[str, str],
                 build_args: Mapping[str, str], inherited: Mapping[str, str] | None = None,
                 escape: str = "\\") -> dict[str, str]:
    """The variables after an ARG instruction, as BuildKit sets them: a build arg wins;
    else the default, expanded with the variables so far; else (inside a stage) the
    global ARG's value (`inherited`); an ARG with none of these stays unset."""
    out = dict(variables)
    for name, default in pairs:
        if name in build_args:
            out[name] = build_args[name]
        elif default is not None:
            out[name] = Lex(escape).word(default, out)
        elif inherited is not None and name in inherited:
            out[name] = inherited[name]
    return out
