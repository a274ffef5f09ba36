"""Nodes -> typed instructions, one parse function per keyword, after BuildKit's
`instructions` package (parse.go, bflag.go, commands_run*.go).

Each keyword declares the flags it takes (`FLAGS`); anything else fails here, at its
line, with a suggestion (`COPY --chwon` -> did you mean --chown?). Parse accepts what
BuildKit's newest Dockerfile frontend accepts; whether the chosen builder runs a
BuildKit-only flag is checked later (`model.buildkit_only`). References to other
stages stay unresolved here (`Origin("ref", ...)`, `From.image` empty): `parse.py`
resolves them once every stage is declared. Pure: no engine, no files.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence

from ..errors import UserError
from ..records import record
from .lexer import Lex, LexError
from .model import (
    CONTEXT,
    NOWHERE,
    Arg,
    Copy,
    CopyGroup,
    Env,
    From,
    Heredoc,
    Instruction,
    Mount,
    Onbuild,
    Origin,
    Run,
    Shell,
    closest,
)
from .reader import MAX_LINE_BYTES, Node, heredoc_word

# Flag name -> kind: "bool" (--x, --x=true|false), "string" (--x=v, once), "strings" (repeatable).
FLAGS: dict[str, dict[str, str]] = {
    "ADD": {"chown": "string", "chmod": "string", "link": "bool", "keep-git-dir": "bool",
            "checksum": "string", "unpack": "bool", "exclude": "strings"},
    "COPY": {"chown": "string", "from": "string", "chmod": "string", "link": "bool",
             "exclude": "strings", "parents": "bool"},
    "FROM": {"platform": "string"},
    "RUN": {"mount": "strings", "network": "string", "security": "string", "device": "strings"},
    "HEALTHCHECK": {"interval": "string", "timeout": "string", "start-period": "string",
                    "start-interval": "string", "retries": "string"},
}
DOCKER_KEYWORDS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                   "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
                   "WORKDIR")
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
RUN_NETWORKS = ("default", "none", "host")
RUN_SECURITY = ("insecure", "sandbox")
# A heredoc that becomes a file name (`COPY <<EOF`, a `#!` script) must be a plain name.
SAFE_HEREDOC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
_DURATION = re.compile(r"^(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@record
class Request:
    """One node being parsed: its keyword (upper case) and where it is."""

    node: Node
    keyword: str
    where: str
    escape: str

    @property
    def line(self) -> int:
        return self.node.line

    @property
    def args(self) -> tuple[str, ...]:
        return self.node.args

    def fail(self, message: str) -> UserError:
        return UserError(message, where=self.where, line=self.node.line)

    def flags(self) -> dict[str, list[str | None]]:
        """The node's flags checked against the keyword's: name -> values (None: no `=`)."""
        declared = FLAGS.get(self.keyword, {})
        found: dict[str, list[str | None]] = {}
        for flag in self.node.flags:
            if flag == "--":
                break  # BuildKit: `--` ends the flags
            name, eq, value = flag[2:].partition("=")
            kind = declared.get(name)
            if kind is None:
                raise self.fail(_unknown_flag(self.keyword, name, declared))
            if name in found and kind != "strings":
                raise self.fail(f"--{name} is given twice to {self.keyword}; keep one")
            if kind == "bool":
                if eq and value.lower() not in ("true", "false"):
                    raise self.fail(f"--{name} takes true or false, not {value!r}; write --{name} or "
                                    f"--{name}=false")
            elif not eq:
                raise self.fail(f"--{name} needs a value; write --{name}=VALUE")
            found.setdefault(name, []).append(value if eq else None)
        return found

    def no_flags(self) -> None:
        self.flags()


def _unknown_flag(keyword: str, name: str, declared: dict[str, str]) -> str:
    near = closest(name.lower(), declared)
    if near is not None:
        return f"unknown flag --{name} for {keyword}; did you mean --{near}?"
    if not declared:
        return f"unknown flag --{name}: {keyword} takes no flags; remove it"
    return f"unknown flag --{name} for {keyword}; {keyword} takes {', '.join('--' + f for f in declared)}"


def _one(flags: dict[str, list[str | None]], name: str) -> str | None:
    values = flags.get(name)
    return values[-1] if values else None


# --- one function per keyword ----------------------------------------------------------------
def _from(r: Request) -> From:
    args = r.args
    alias = None
    if len(args) == 3 and args[1].lower() == "as":
        alias = args[2]
    elif len(args) != 1:
        raise r.fail(f"FROM takes `[--platform=...] <image> [AS <stage>]`; got `FROM {r.node.value}`")
    r.flags()
    return From("FROM", r.node.value, r.line, flags=r.node.raw_flags, image="", stage=None,
                written=args[0], alias=alias)


def _name(r: Request) -> Instruction:
    if len(r.node.value.split()) != 1:
        raise r.fail("NAME takes exactly one stage name; write `NAME <stage>` followed by its FROM")
    return Instruction("NAME", r.node.value, r.line)


def _copy(r: Request) -> Copy:
    keyword = r.keyword
    if len(r.args) < 2:
        raise r.fail(f"{keyword} needs at least one source and a destination; write `{keyword} <src>... <dest>`")
    flags = r.flags()
    *sources, dest = r.args
    if _heredoc_word(dest) is not None:
        raise r.fail(f"{keyword} cannot take a heredoc as its destination; put the destination path last")
    bodies = {h.name: h for h in r.node.heredocs}
    paths: list[str] = []
    inline: list[Heredoc] = []
    for source in sources:
        word = _heredoc_word(source)
        if word is None:
            paths.append(source)
            continue
        if not SAFE_HEREDOC_NAME.match(word.name):
            raise r.fail(f"heredoc name {word.name!r} becomes a file name in {keyword}; use a plain name "
                         "such as EOF or file.txt")
        body = bodies.get(word.name)
        inline.append(Heredoc(word.name, body.content if body else "", word.expand, word.chomp, word.fd))
        if word.expand:
            _check_expandable(r, inline[-1].body)
    source_from = _one(flags, "from")
    if source_from is not None:
        try:
            expanded = Lex(r.escape).word(source_from, {})
        except LexError:
            expanded = None
        if expanded != source_from:
            raise r.fail("variable expansion is not supported for --from; define a stage "
                         f"`FROM {source_from} AS <name>` (its ARG global) and copy --from=<name>")
    kept = tuple((name, value) for name, values in flags.items() if name != "from" for value in values)
    groups: tuple[CopyGroup, ...] = ()
    if paths:
        if source_from is not None:
            groups = (CopyGroup(Origin("ref", source_from), tuple(paths)),)
        elif keyword == "ADD":
            groups = _add_groups(paths)
        else:
            groups = (CopyGroup(CONTEXT, tuple(paths)),)
    return Copy(keyword, r.node.value, r.line, heredocs=r.node.heredocs, flags=kept, groups=groups, dest=dest,
                json_form=r.node.json, inline=tuple(inline))


def _heredoc_word(word: str) -> Heredoc | None:
    try:
        return heredoc_word(word)
    except LexError:
        return None  # BuildKit's MustParseHeredoc: not a heredoc


def _check_expandable(r: Request, body: str) -> None:
    """A COPY heredoc body is expanded like a word (quotes not special): its `${...}`
    must be readable, whatever the variables' values."""
    try:
        Lex(skip_process_quotes=True, skip_unset_env=True).word(body, {})
    except LexError as exc:
        raise r.fail(f"the heredoc's content cannot be expanded ({exc}); fix the ${{...}}, or quote the "
                     "delimiter (<<\"EOF\") to copy it as written") from None


def _add_groups(sources: Sequence[str]) -> tuple[CopyGroup, ...]:
    groups: list[CopyGroup] = []
    for source in sources:
        origin = Origin("url", source) if _URL_RE.match(source) else CONTEXT
        if groups and groups[-1].origin == origin and origin.is_context:
            groups[-1] = CopyGroup(origin, (*groups[-1].paths, source))
        else:
            groups.append(CopyGroup(origin, (source,)))
    return tuple(groups)


def _run(r: Request) -> Run:
    flags = r.flags()
    network = _one(flags, "network")
    if network is not None and network not in RUN_NETWORKS:
        raise r.fail(f"invalid network mode {network!r} for RUN --network; use {', '.join(RUN_NETWORKS)}")
    security = _one(flags, "security")
    if security is not None and security not in RUN_SECURITY:
        raise r.fail(f"security {security!r} is not valid for RUN --security; use {' or '.join(RUN_SECURITY)}")
    mounts = tuple(_mount(r, spec or "") for spec in flags.get("mount", []))
    command = r.node.rest
    heredocs = r.node.heredocs
    if heredocs:
        _check_run_heredocs(r, command, heredocs)
    return Run("RUN", r.node.value, r.line, heredocs=heredocs, mounts=mounts, command=command,
               flags=r.node.raw_flags, json_form=r.node.json)


def _check_run_heredocs(r: Request, command: str, heredocs: tuple[Heredoc, ...]) -> None:
    single = _heredoc_word(command)
    if single is not None and heredocs[0].body.startswith("#!") and not SAFE_HEREDOC_NAME.match(single.name):
        raise r.fail(f"heredoc name {single.name!r} names the script file; use a plain name such as EOF")
    # A RUN heredoc is sent as one line (its exec form, or the script a RUN writes).
    size = len(json.dumps(command + "".join(h.content + h.name for h in heredocs)).encode()) + 1024
    if size > MAX_LINE_BYTES:
        raise r.fail(f"this RUN heredoc is {size} bytes, more than the engine reads as one line once lowered; "
                     "put the script in a file in the build context and COPY it")


def _mount(r: Request, spec: str) -> Mount:
    try:
        fields = next(csv.reader([spec]), [])
    except csv.Error as exc:
        raise r.fail(f"cannot read --mount={spec} ({exc}); write --mount=type=...,target=...") from None
    options: list[tuple[str, str]] = []
    for part in fields:
        key, eq, value = part.partition("=")
        if key:
            options.append((key.strip().lower(), value.strip() if eq else "true"))
    kind = next((v for k, v in options if k == "type"), "bind").lower()
    if kind not in MOUNT_TYPES:
        near = closest(kind, MOUNT_TYPES)
        hint = f"did you mean {near}?" if near else f"use one of {', '.join(sorted(MOUNT_TYPES))}"
        raise r.fail(f"--mount type '{kind}' is unknown; {hint}")
    source = next((v for k, v in options if k == "from"), None)
    if source is not None and "$" in source[:-1]:
        raise r.fail("--mount from= does not support variable expansion; define an alias stage "
                     f"`FROM {source} AS <name>` and mount from=<name>")
    origin = Origin("ref", source) if source else CONTEXT if kind == "bind" else NOWHERE
    return Mount(kind, tuple(options), origin)


def _arg(r: Request) -> Arg:
    if not r.args:
        raise r.fail("ARG requires at least one argument; write `ARG NAME[=default]`")
    names, defaults = [], []
    for word in r.args:
        key, eq, value = word.partition("=")
        if eq and not key:
            raise r.fail("ARG names can not be blank; write `ARG NAME[=default]`")
        names.append(key)
        defaults.append(value if eq else None)
    return Arg("ARG", r.node.value, r.line, names=tuple(names), defaults=tuple(defaults))


def _pairs(r: Request) -> tuple[tuple[str, str], ...]:
    r.no_flags()
    args = r.args
    if not args:
        raise r.fail(f"{r.keyword} requires at least one argument; write `{r.keyword} name=value`")
    pairs = []
    for i in range(0, len(args) - 2, 3):
        if not args[i]:
            raise r.fail(f"{r.keyword} names can not be blank; write `{r.keyword} name=value`")
        pairs.append((args[i], args[i + 1]))
    return tuple(pairs)


def _env(r: Request) -> Env:
    return Env("ENV", r.node.value, r.line, pairs=_pairs(r))


def _label(r: Request) -> Instruction:
    _pairs(r)
    return Instruction("LABEL", r.node.value, r.line)


def _exactly_one(r: Request) -> Instruction:
    if len(r.args) != 1:
        raise r.fail(f"{r.keyword} requires exactly one argument; write `{r.keyword} <value>`")
    if r.keyword != "STOPSIGNAL":  # BuildKit reads no flags on STOPSIGNAL
        r.no_flags()
    return Instruction(r.keyword, r.node.value, r.line)


def _at_least_one(r: Request) -> Instruction:
    if not r.args:
        raise r.fail(f"{r.keyword} requires at least one argument; write `{r.keyword} "
                     f"{'<port>' if r.keyword == 'EXPOSE' else '<path>'}...`")
    r.no_flags()
    if r.keyword == "VOLUME" and any(not v.strip() for v in r.args):
        raise r.fail("VOLUME specified can not be an empty string; give a path")
    return Instruction(r.keyword, r.node.value, r.line)


def _command(r: Request) -> Instruction:
    r.no_flags()
    return Instruction(r.keyword, r.node.value, r.line)


def _shell(r: Request) -> Shell:
    r.no_flags()
    if not r.args:
        raise r.fail('SHELL requires at least one argument; write SHELL ["/bin/sh", "-c"]')
    if not r.node.json:
        raise r.fail('SHELL requires the arguments to be in JSON form; write SHELL ["/bin/bash", "-c"]')
    return Shell("SHELL", r.node.value, r.line, shell=tuple(r.args))


def _healthcheck(r: Request) -> Instruction:
    if not r.args:
        raise r.fail("HEALTHCHECK requires at least one argument; write `HEALTHCHECK [--interval=..] CMD "
                     "<command>` or `HEALTHCHECK NONE`")
    kind, *command = r.args
    if kind.upper() == "NONE":
        if command:
            raise r.fail("HEALTHCHECK NONE takes no arguments; remove what follows NONE")
        return Instruction("HEALTHCHECK", r.node.value, r.line)  # BuildKit reads no flags here
    flags = r.flags()
    if kind.upper() != "CMD":
        raise r.fail(f"unknown HEALTHCHECK type {kind!r}; use CMD <command> (or NONE)")
    if not command:
        raise r.fail("missing command after HEALTHCHECK CMD; write HEALTHCHECK CMD <command>")
    for name in ("interval", "timeout", "start-period", "start-interval"):
        value = _one(flags, name)
        if value and not _duration_ok(value):
            raise r.fail(f"--{name}={value} is not a duration of at least 1ms; write it as 30s, 1m30s or 500ms")
    retries = _one(flags, "retries")
    if retries:
        if not re.fullmatch(r"[+-]?\d+", retries):
            raise r.fail(f"--retries={retries} is not a whole number; write e.g. --retries=3")
        if int(retries) < 0:
            raise r.fail(f"--retries cannot be negative ({retries}); write 0 or more")
    return Instruction("HEALTHCHECK", r.node.value, r.line)


def _duration_ok(text: str) -> bool:
    """Go's time.ParseDuration, and BuildKit's rule: 0, or at least a millisecond."""
    sign = text[:1] in "+-" and text[:1]
    body = text[1:] if sign else text
    if body == "0":
        return True
    if not _DURATION.match(body):
        return False
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(body))
    return seconds == 0 or (sign != "-" and seconds >= 1e-3)


def _onbuild(r: Request) -> Onbuild:
    if r.node.sub is None:
        raise r.fail("ONBUILD requires at least one argument; write `ONBUILD <instruction>`")
    r.no_flags()
    trigger = r.node.sub.keyword.upper()
    if trigger in ("ONBUILD", "FROM", "MAINTAINER", "NAME"):
        raise r.fail(f"ONBUILD cannot trigger {trigger}; write the instruction the stages built FROM this one "
                     "should run")
    if r.node.heredocs:
        raise r.fail("ONBUILD with a heredoc cannot be written for engines without Dockerfile 1.4 syntax; "
                     "write the trigger without a heredoc")
    inner = parse(r.node.sub, r.where, r.escape)
    return Onbuild("ONBUILD", r.node.value, r.line, trigger=inner)


PARSERS: dict[str, Callable[[Request], Instruction]] = {
    "ADD": _copy, "ARG": _arg, "CMD": _command, "COPY": _copy, "ENTRYPOINT": _command, "ENV": _env,
    "EXPOSE": _at_least_one, "FROM": _from, "HEALTHCHECK": _healthcheck, "LABEL": _label,
    "MAINTAINER": _exactly_one, "NAME": _name, "ONBUILD": _onbuild, "RUN": _run, "SHELL": _shell,
    "STOPSIGNAL": _exactly_one, "USER": _exactly_one, "VOLUME": _at_least_one, "WORKDIR": _exactly_one,
}


def unknown_instruction(keyword: str) -> str:
    near = closest(keyword.upper(), PARSERS)
    if near is not None:
        suggestion = near.lower() if keyword == keyword.lower() else near
        return f"unknown instruction {keyword}; did you mean {suggestion}?"
    return f"unknown instruction {keyword}; use a Dockerfile instruction or NAME"


def parse(node: Node, where: str, escape: str = "\\") -> Instruction:
    """The typed instruction of one node; UserError at its line for what BuildKit refuses."""
    keyword = node.keyword.upper()
    parser = PARSERS.get(keyword)
    if parser is None:
        raise UserError(unknown_instruction(node.keyword), where=where, line=node.line)
    return parser(Request(node, keyword, where, escape))
