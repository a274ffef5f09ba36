"""Path patterns as Docker and BuildKit read them (pure: no I/O).

Two kinds, both on '/'-separated relative paths:
- `go_match`: Go's `path/filepath.Match` (`*` and `?` never match '/', `[...]` classes with
  `^` for negation, `\\` escapes). fsutil matches `include-patterns` and `followpaths` with it,
  component by component (`match_prefix`).
- `Matcher`: `.dockerignore` and `exclude-patterns` (moby's pkg/fileutils PatternMatcher at
  20.10): each pattern is cleaned, `!` makes it an exception, `**` spans any number of
  folders, a pattern that matches a folder matches everything inside it, and the last pattern
  that matches decides. `read_dockerignore` reads a file's lines the way docker/cli does.
"""

from __future__ import annotations

import posixpath
import re

from .records import record


class BadPattern(ValueError):
    """A pattern Go's filepath.Match would reject (an unclosed or empty `[` class, a
    trailing backslash)."""


def clean(path: str) -> str:
    """Go's `filepath.Clean` for '/'-separated paths (`""` is `.`)."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    # normpath keeps a leading '//' (POSIX allows it to mean something else); Go does not.
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


# --- Go's filepath.Match -------------------------------------------------------------------


def _class_end(pattern: str, start: int) -> int:
    """Index just past the `]` closing the class that opens at pattern[start] == '['."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    first = True
    while i < len(pattern):
        char = pattern[i]
        if char == "]" and not first:
            return i + 1
        if char == "\\":
            i += 1
        first = False
        i += 1
    raise BadPattern(f"unclosed character class in {pattern!r}")


def _class_matches(body: str, char: str) -> bool:
    """Does `char` fall in the class `body` (the text between `[` and `]`)?"""
    negated = body.startswith("^")
    if negated:
        body = body[1:]
    if not body:
        raise BadPattern("empty character class")
    found = False
    i = 0
    while i < len(body):
        low = body[i]
        if low == "\\":
            i += 1
            if i >= len(body):
                raise BadPattern("trailing backslash in a character class")
            low = body[i]
        high = low
        if i + 2 < len(body) and body[i + 1] == "-":
            high = body[i + 2]
            i += 2
            if high == "\\":
                i += 1
                if i >= len(body):
                    raise BadPattern("trailing backslash in a character class")
                high = body[i]
        if low <= char <= high:
            found = True
        i += 1
    return found != negated


def _check(pattern: str) -> None:
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 >= len(pattern):
                raise BadPattern(f"trailing backslash in {pattern!r}")
            i += 2
        elif pattern[i] == "[":
            end = _class_end(pattern, i)
            _class_matches(pattern[i + 1:end - 1], "x")
            i = end
        else:
            i += 1


def go_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match on '/'-separated names. Raises BadPattern as Go returns
    ErrBadPattern (for the whole pattern, whatever `name` is)."""
    _check(pattern)
    return _match_from(pattern, 0, name, 0)


def _match_from(pattern: str, p: int, name: str, n: int) -> bool:
    while p < len(pattern):
        char = pattern[p]
        if char == "*":
            while p < len(pattern) and pattern[p] == "*":
                p += 1
            if p == len(pattern):
                return "/" not in name[n:]
            for end in range(n, len(name) + 1):
                if _match_from(pattern, p, name, end):
                    return True
                if end < len(name) and name[end] == "/":
                    return False
            return False
        if n >= len(name):
            return False
        if char == "?":
            if name[n] == "/":
                return False
            p, n = p + 1, n + 1
        elif char == "[":
            end = _class_end(pattern, p)
            if not _class_matches(pattern[p + 1:end - 1], name[n]):
                return False
            p, n = end, n + 1
        else:
            if char == "\\":
                p += 1
                char = pattern[p]
            if name[n] != char:
                return False
            p, n = p + 1, n + 1
    return n == len(name)


def match_prefix(pattern: str, path: str) -> tuple[bool, bool]:
    """fsutil's include test: (matched, partial). A pattern deeper than `path` is cut to
    `path`'s depth first, and a match is then `partial` (a folder on the way to it)."""
    depth = path.count("/")
    partial = False
    if pattern.count("/") > depth:
        pattern = "/".join(pattern.split("/")[:depth + 1])
        partial = True
    try:
        return go_match(pattern, path), partial
    except BadPattern:
        return False, partial


# --- .dockerignore -------------------------------------------------------------------------


@record
class Pattern:
    text: str  # cleaned, without its `!`
    exception: bool
    depth: int  # how many path components it has
    regex: re.Pattern[str]


def _translate(pattern: str) -> str:
    """fileutils' pattern-to-regexp translation (`**`, `*`, `?`, escapes; other characters
    keep their regexp meaning, as there)."""
    out = "^"
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
                if i + 1 < len(pattern) and pattern[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char in ".$":
            out += "\\" + char
        elif char == "\\":
            if i + 1 < len(pattern):
                i += 1
                out += re.escape(pattern[i])
            else:
                out += "\\\\"
        else:
            out += char
        i += 1
    return out + "$"


class Matcher:
    """moby's PatternMatcher: `matches(path)` says whether `path` is excluded."""

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        self.patterns: list[Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = clean(text)
            exception = text.startswith("!")
            if exception:
                if len(text) == 1:
                    raise BadPattern('illegal exclusion pattern: "!"')
                text = text[1:]
            _check(text)
            try:
                regex = re.compile(_translate(text), re.DOTALL)
            except re.error as exc:
                raise BadPattern(f"{raw!r}: {exc}") from None
            self.patterns.append(Pattern(text, exception, len(text.split("/")), regex))

    @property
    def exceptions(self) -> bool:
        return any(p.exception for p in self.patterns)

    def matches(self, path: str) -> bool:
        """Is the clean relative `path` excluded (the last pattern that matches it decides)?"""
        if not self.patterns:
            return False  # no .dockerignore: asked of every context file, before every build
        parent = path.rpartition("/")[0] or "."
        parent_parts = parent.split("/")
        matched = False
        for pattern in self.patterns:
            hit = bool(pattern.regex.match(path))
            if not hit and parent != "." and pattern.depth <= len(parent_parts):
                hit = bool(pattern.regex.match("/".join(parent_parts[:pattern.depth])))
            if hit:
                matched = not pattern.exception
        return matched

    def may_hold_exception(self, folder: str) -> bool:
        """Can something inside an excluded `folder` be brought back by an exception?
        (fsutil then still descends into it.)"""
        prefix = folder + "/"
        return any(p.exception and (p.text + "/").startswith(prefix) for p in self.patterns)


def read_dockerignore(text: str) -> list[str]:
    """The patterns of a `.dockerignore` file, as docker/cli reads them: `#` comment lines
    and blank lines dropped (and a UTF-8 byte order mark), each pattern trimmed and cleaned, a leading '/' removed."""
    patterns = []
    for line in text.removeprefix("\ufeff").splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append(("!" if exception else "") + pattern)
    return patterns
