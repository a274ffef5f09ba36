"""Compilation-image Dockerfiles (seed and native syntax) -> a checked, typed `Graph`.

Tokenising (continuations, comments, the escape directive) is dockerfile-parse's job;
this module applies Docker's rules on top, resolves every stage reference, and reports
every mistake as one `Dockerfile:LINE: what is wrong; what to do` line. It produces the
typed model only; what is sent to an engine is `lowering.py`'s business. Pure: it never
talks to an engine.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import WordSplitter

from ..errors import UserError
from .model import (
    CONTEXT,
    NOWHERE,
    STAGE_NAME_MAX,
    STAGE_NAME_RE,
    Arg,
    Copy,
    CopyGroup,
    From,
    Graph,
    Instruction,
    Mount,
    Onbuild,
    Origin,
    Run,
    Stage,
    edit_distance,
    task_name_for,
)

# Docker's scanner refuses longer lines (bufio.Scanner's 64 KiB token limit).
MAX_LINE_BYTES = 64 * 1024

DOCKER_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
OUR_INSTRUCTIONS = frozenset({"NAME"})
MOUNT_TYPES = frozenset({"bind", "cache", "tmpfs", "secret", "ssh"})

_ESCAPE_DIRECTIVE_RE = re.compile(r"^\s*#\s*escape\s*=\s*(\\|`)\s*$", re.I)
_SEED_SOURCE_RE = re.compile(r"^([^:/\s]+):(.*)$")
_VARIABLE_RE = re.compile(r"\$(?:\{(\w+)(?:(:[-+])([^}]*))?\}|(\w+))")
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

# Does the build context hold this source path (as written in a COPY)? The parser stays pure:
# whoever knows the context folder passes this in (`in_context`), see `parse_file`.
ContextLookup = Callable[[str], bool]


def read_dockerfile(path: str | Path) -> str:
    """The file's text; every way it can be unreadable becomes one UserError line."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file; give the Dockerfile's path (in tasks.py: collection('path/to/Dockerfile'); "
                        f"compimg: -f PATH) (cwd is {Path.cwd()})", where=where) from None
    except IsADirectoryError:
        raise UserError("is a directory; pass the Dockerfile inside it", where=where) from None
    except OSError as exc:
        raise UserError(f"cannot read it ({exc.strerror}); check its permissions",
                        where=where) from None
    return decode_dockerfile(data, where)


def decode_dockerfile(data: bytes, where: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError("not valid UTF-8; save the file as UTF-8",
                        where=where, line=data.count(b"\n", 0, exc.start) + 1) from None


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Docker's `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}` (used on FROM)."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name, "")
        if match.group(2) == ":-":
            return value or match.group(3)
        if match.group(2) == ":+":
            return match.group(3) if value else ""
        return value
    return _VARIABLE_RE.sub(sub, text)


@dataclass
class _Draft:
    """A stage while it is being read."""

    name: str
    index: int
    line: int
    instructions: list[Instruction] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str, where: str, build_args: Mapping[str, str] | None,
                 in_context: ContextLookup | None = None) -> None:
        self.text = text if text.endswith("\n") else text + "\n"
        self.where = where
        self.in_context = in_context
        self.build_args = dict(build_args or {})
        self.drafts: list[_Draft] = []
        self.global_args: list[Arg] = []
        self.arg_values: dict[str, str] = {}
        self.escape = "\\"
        self.declared: dict[str, tuple[int, int]] = {}  # name -> (index, line)
        self.by_index: list[str] = []
        self.task_names: dict[str, tuple[str, int]] = {}
        self.generated: set[str] = set()  # names we made up for unnamed stages

    def fail(self, line: int, message: str) -> UserError:
        return UserError(message, where=self.where, line=line)

    # --- entry point --------------------------------------------------------------------
    def parse(self) -> Graph:
        structure = self._tokenise()
        if not structure:
            raise self.fail(1, "no instructions (empty or only comments); "
                               "add a FROM (and NAME) for each stage")
        self._declare_stages(structure)
        self._read(structure)
        if not self.drafts:
            raise self.fail(self._unpack(structure[0])[2], "no FROM: the file defines no stage; "
                                                            "add `NAME <stage>` and `FROM <image>`")
        return self._freeze()

    def _tokenise(self) -> list[dict[str, object]]:
        for raw in self.text.splitlines():
            match = _ESCAPE_DIRECTIVE_RE.match(raw)
            if match:
                self.escape = match.group(1)
            elif not re.match(r"^\s*#\s*\w+\s*=", raw):
                break
        parser = DockerfileParser(fileobj=io.BytesIO(self.text.encode("utf-8")))
        return [i for i in parser.structure if i["instruction"] != "COMMENT"]

    def _declare_stages(self, structure: list[dict[str, object]]) -> None:
        """First pass: every stage's name and line, so later references can be told apart
        from images and forward references reported with both lines."""
        pending: tuple[str, int] | None = None
        index = 0
        for item in structure:
            keyword, value, line = self._unpack(item)
            if keyword == "NAME":
                if pending is not None:
                    raise self.fail(pending[1], f"NAME {pending[0]} is not followed by FROM; "
                                                "put the stage's FROM right after its NAME")
                words = value.split()
                if len(words) != 1:
                    raise self.fail(line, "NAME takes exactly one stage name; "
                                          "write `NAME <stage>` followed by its FROM")
                pending = (self._check_name(words[0], line), line)
                continue
            if pending is not None and keyword != "FROM":
                raise self.fail(pending[1], f"NAME {pending[0]} is not followed by FROM "
                                            f"(line {line} is {keyword}); put FROM right after NAME")
            if keyword != "FROM":
                continue
            _, alias = self._split_from(value, line)
            name, named_at = pending if pending else (None, line)
            if alias is not None:
                alias = self._check_name(alias, line)
                if name is not None and alias != name:
                    raise self.fail(line, f"stage is named twice (NAME {name} on line "
                                          f"{named_at}, AS {alias}); keep one of them")
                name, named_at = alias, line
            if name is None:
                name = f"stage-{index}"
                self.generated.add(name)
            self._declare(name, index, named_at)
            pending = None
            index += 1
        if pending is not None:
            raise self.fail(pending[1], f"NAME {pending[0]} is not followed by FROM; "
                                        "add the stage's FROM after it")

    def _declare(self, name: str, index: int, line: int) -> None:
        if name in self.declared:
            first = self.declared[name][1]
            raise self.fail(line, f"duplicate stage name '{name}' (first on line {first}); "
                                  "rename one of them")
        task = task_name_for(name)
        if task in self.task_names:
            other, first = self.task_names[task]
            raise self.fail(line, f"stage '{name}' and stage '{other}' (line {first}) "
                                  f"would both be task '{task}'; rename one of them")
        self.declared[name] = (index, line)
        self.by_index.append(name)
        self.task_names[task] = (name, line)

    def _check_name(self, raw: str, line: int) -> str:
        name = raw.lower()
        if not STAGE_NAME_RE.match(name) or len(name) > STAGE_NAME_MAX:
            raise self.fail(line, f"invalid stage name '{raw}'; use a letter followed by "
                                  "letters, digits, '-', '_' or '.' (at most 128)")
        return name

    @staticmethod
    def _unpack(item: dict[str, object]) -> tuple[str, str, int]:
        return str(item["instruction"]), str(item["value"] or "").strip(), int(item["startline"]) + 1  # type: ignore[call-overload]

    def _split_from(self, value: str, line: int) -> tuple[tuple[str, ...], str | None]:
        """`[--flag=x]... image [AS name]` -> (flags + image words, alias)."""
        words = value.split()
        alias = None
        if len(words) >= 3 and words[-2].lower() == "as":
            alias = words[-1]
            words = words[:-2]
        flags = [w for w in words if w.startswith("--")]
        rest = [w for w in words if not w.startswith("--")]
        if len(rest) != 1 or words[: len(flags)] != flags:
            raise self.fail(line, "FROM takes `[--platform=...] <image> [AS <stage>]`; "
                                  f"got `FROM {value}`")
        return tuple(words), alias

    # --- second pass --------------------------------------------------------------------
    def _read(self, structure: list[dict[str, object]]) -> None:
        current: _Draft | None = None
        pending_name: tuple[str, int] | None = None
        for item in structure:
            keyword, value, line = self._unpack(item)
            self._check_keyword(keyword, line)
            if keyword == "NAME":
                pending_name = (value.split()[0].lower(), line)
                continue
            if keyword == "FROM":
                current = self._open_stage(value, line, pending_name)
                pending_name = None
                continue
            if current is None:
                if keyword == "ARG":
                    self.global_args.append(self._global_arg(value, line))
                    continue
                raise self.fail(line, f"{keyword} before any FROM; start the stage "
                                      "with `NAME <stage>` and `FROM <image>`")
            current.instructions.append(self._instruction(current, keyword, value, line))

    def _check_keyword(self, keyword: str, line: int) -> None:
        if keyword not in DOCKER_INSTRUCTIONS and keyword not in OUR_INSTRUCTIONS:
            raise self.fail(line, f"unknown instruction '{keyword}'; "
                                  "use a Dockerfile instruction or NAME")

    def _instruction(self, draft: _Draft, keyword: str, value: str, line: int) -> Instruction:
        if keyword in ("COPY", "ADD"):
            return self._copy(draft, keyword, value, line)
        if keyword == "RUN":
            return self._run(draft, value, line)
        if keyword == "ARG":
            return Arg("ARG", value, line, self._arg_names(value, line))
        if keyword == "ONBUILD":
            return self._onbuild(draft, value, line)
        return Instruction(keyword, value, line)

    def _arg_names(self, value: str, line: int) -> tuple[str, ...]:
        words = list(WordSplitter(value).split())
        if not words:
            raise self.fail(line, "ARG needs a name; write `ARG NAME[=default]`")
        return tuple(word.partition("=")[0] for word in words)

    def _global_arg(self, value: str, line: int) -> Arg:
        names = self._arg_names(value, line)
        for word in WordSplitter(value).split():
            key, _, default = word.partition("=")
            self.arg_values[key] = self.build_args.get(key, default)
        return Arg("ARG", value, line, names)

    def _open_stage(self, value: str, line: int, pending_name: tuple[str, int] | None) -> _Draft:
        words, _ = self._split_from(value, line)
        index = len(self.drafts)
        draft = _Draft(name=self.by_index[index], index=index,
                       line=pending_name[1] if pending_name else line)
        flags = tuple(w for w in words if w.startswith("--"))
        image = expand(words[-1], self.arg_values)
        if not image:
            raise self.fail(line, f"FROM {words[-1]} expands to nothing; give the ARG a "
                                  "default or pass --build-arg")
        stage = self._stage_ref(image, line, index, as_base=True)
        draft.instructions.append(From("FROM", value, line, flags=flags, image=stage or image,
                                       stage=stage, written=words[-1]))
        self.drafts.append(draft)
        return draft

    def _stage_ref(self, ref: str, line: int, current: int, *, as_base: bool = False,
                   by_index: bool = False) -> str | None:
        """The stage `ref` names, or None if it names an image. Forward and self
        references are errors (stages only look backwards)."""
        if by_index and ref.isdigit():
            number = int(ref)
            if number >= len(self.by_index):
                known = ", ".join(f"{i}={n}" for i, n in enumerate(self.by_index))
                raise self.fail(line, f"unknown stage index {number}; known stages: {known}")
            ref = self.by_index[number]
        name = ref.lower()
        if name not in self.declared:
            return None
        index, declared_line = self.declared[name]
        if index == current:
            if as_base:
                return None  # `FROM x AS x`: Docker reads the image x, not the stage itself
            raise self.fail(line, f"stage '{name}' refers to itself; copy from an earlier "
                                  "stage or from the build context")
        if index > current:
            raise self.fail(line, f"stage '{name}' is used before it is defined on line "
                                  f"{declared_line}; move that stage above this one")
        return name

    def _origin(self, ref: str, line: int, current: int) -> Origin:
        stage = self._stage_ref(ref, line, current, by_index=True)
        return Origin("stage", stage) if stage else Origin("image", ref)

    @staticmethod
    def _leading_flags(value: str) -> tuple[list[str], str]:
        """`--a=1 --b rest...` -> (['--a=1', '--b'], 'rest...'), the rest as written."""
        flags: list[str] = []
        rest = value
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            flags.append(word)
            rest = rest.lstrip()
        return flags, rest

    def _copy(self, draft: _Draft, keyword: str, value: str, line: int) -> Copy:
        raw_flags, rest = self._leading_flags(value)
        flags: list[tuple[str, str | None]] = []
        for word in raw_flags:
            key, eq, flag_value = word[2:].partition("=")
            flags.append((key.lower(), flag_value if eq else None))
        words = rest.split()
        json_form = rest.startswith("[")
        if json_form:
            try:
                parsed = json.loads(rest)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                words = parsed
            else:
                json_form = False  # Docker falls back to whitespace words as well
        if len(words) < 2:
            raise self.fail(line, f"{keyword} needs at least one source and a destination; "
                                  f"write `{keyword} <src>... <dest>`")
        sources, dest = tuple(words[:-1]), words[-1]
        explicit = next((v for k, v in flags if k == "from"), None)
        flags = [(k, v) for k, v in flags if k != "from"]
        groups: tuple[CopyGroup, ...]
        if explicit is not None:
            groups = (CopyGroup(self._origin(explicit, line, draft.index), sources),)
        elif keyword == "ADD":
            groups = self._add_groups(sources)
        else:
            groups = self._seed_groups(draft, sources, dest, line)
        return Copy(keyword, value, line, flags=tuple(flags), groups=groups, dest=dest,
                    json_form=json_form)

    @staticmethod
    def _add_groups(sources: tuple[str, ...]) -> tuple[CopyGroup, ...]:
        groups: list[CopyGroup] = []
        for source in sources:
            origin = Origin("url", source) if _URL_RE.match(source) else CONTEXT
            if groups and groups[-1].origin == origin and origin.is_context:
                groups[-1] = CopyGroup(origin, (*groups[-1].paths, source))
            else:
                groups.append(CopyGroup(origin, (source,)))
        return tuple(groups)

    def _seed_groups(self, draft: _Draft, sources: tuple[str, ...], dest: str,
                     line: int) -> tuple[CopyGroup, ...]:
        """Seed syntax: `stage:/abs/path` sources, possibly mixed with context sources."""
        groups: list[tuple[Origin, list[str]]] = []
        for source in sources:
            origin, path = CONTEXT, source
            match = _SEED_SOURCE_RE.match(source)
            if match and match.group(1).lower() in self.declared:
                origin = Origin("stage", self._stage_ref(match.group(1), line, draft.index) or "")
                path = match.group(2)
                if not path.startswith("/"):
                    raise self.fail(line, f"'{source}': the path after '{match.group(1)}:' must "
                                          f"be absolute; write {match.group(1)}:/{path}")
            elif match and match.group(2).startswith("/"):
                self._check_misspelt_stage(source, match.group(1), match.group(2), line)
            if groups and groups[-1][0] == origin:
                groups[-1][1].append(path)
            else:
                groups.append((origin, [path]))
        if len(sources) > 1 and len(groups) > 1 and not dest.endswith("/") and "$" not in dest:
            raise self.fail(line, f"COPY with several sources needs a directory destination "
                                  f"ending in '/'; write {dest}/")
        return tuple(CopyGroup(origin, tuple(paths)) for origin, paths in groups)

    def _check_misspelt_stage(self, source: str, name: str, path: str, line: int) -> None:
        """`COPY buidl:/x .`: a context path that looks like a stage's path, with a name one
        or two edits from a stage, is a typo unless the context really has that path. Only
        checked when the caller says what the context holds (`in_context`)."""
        near = _closest(name.lower(), self.declared)
        if near is None or self.in_context is None or self.in_context(source):
            return
        raise self.fail(line, f"'{source}' is not in the build context and '{name}' is not a stage; "
                              f"did you mean stage '{near}'? (write {near}:{path})")

    def _run(self, draft: _Draft, value: str, line: int) -> Run:
        flags, command = self._leading_flags(value)
        mounts = []
        for flag in flags:
            key, _, spec = flag[2:].partition("=")
            if key.lower() == "mount":
                mounts.append(self._mount(draft, spec, line))
        return Run("RUN", value, line, mounts=tuple(mounts), command=command, flags=tuple(flags))

    def _mount(self, draft: _Draft, spec: str, line: int) -> Mount:
        options: list[tuple[str, str]] = []
        for part in spec.split(","):
            key, eq, option = part.partition("=")
            if key:
                options.append((key.strip().lower(), option.strip() if eq else "true"))
        kind = next((v for k, v in options if k == "type"), "bind").lower()
        if kind not in MOUNT_TYPES:
            raise self.fail(line, f"--mount type '{kind}' is unknown; use one of "
                                  f"{', '.join(sorted(MOUNT_TYPES))}")
        source = next((v for k, v in options if k == "from"), None)
        origin = self._origin(source, line, draft.index) if source else CONTEXT if kind == "bind" else NOWHERE
        return Mount(kind, tuple(options), origin)

    def _onbuild(self, draft: _Draft, value: str, line: int) -> Onbuild:
        keyword, _, rest = value.partition(" ")
        keyword = keyword.upper()
        if keyword in ("ONBUILD", "FROM", "MAINTAINER", "NAME"):
            raise self.fail(line, f"ONBUILD cannot trigger {keyword}; write the instruction "
                                  "the stages built FROM this one should run")
        self._check_keyword(keyword, line)
        return Onbuild("ONBUILD", value, line, trigger=self._instruction(draft, keyword, rest.strip(), line))

    def _freeze(self) -> Graph:
        stages: list[Stage] = []
        for d in self.drafts:
            base = d.instructions[0]
            assert isinstance(base, From)
            inherited: tuple[Onbuild, ...] = ()
            if base.stage is not None:
                parent = stages[self.declared[base.stage][0]]
                inherited = tuple(i for i in parent.instructions if isinstance(i, Onbuild))
            stages.append(Stage(name=d.name, index=d.index, line=d.line,
                                named=d.name not in self.generated,
                                instructions=tuple(d.instructions), inherited=inherited))
        return Graph(path=self.where, stages=tuple(stages), global_args=tuple(self.global_args),
                     escape=self.escape)


def _closest(name: str, stages: Mapping[str, object], limit: int = 2) -> str | None:
    """The stage name nearest to `name` within `limit` edits (the earliest on a tie)."""
    best: tuple[int, str] | None = None
    for candidate in stages:
        distance = edit_distance(name, candidate)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def context_lookup(context: str | Path) -> ContextLookup:
    """`in_context` for a context folder: does a COPY source (a path or a pattern, as
    written) name anything in it?"""
    root = os.path.abspath(context)

    def exists(source: str) -> bool:
        path = os.path.join(root, source.lstrip("/"))
        if any(c in source for c in "*?["):
            return bool(glob.glob(os.path.join(glob.escape(root), source.lstrip("/"))))
        return os.path.lexists(path)

    return exists


def parse_text(text: str, where: str = "Dockerfile", build_args: Mapping[str, str] | None = None,
               in_context: ContextLookup | None = None) -> Graph:
    """Parse Dockerfile text; `where` names it in messages. `in_context` says whether the
    build context holds a path: given it, `COPY buidl:/x .` (no such stage, no such path)
    is an error that suggests stage 'build'."""
    for number, raw in enumerate(text.split("\n"), start=1):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size >= MAX_LINE_BYTES:
            raise UserError(f"line is {size} bytes, over Docker's 64 KiB limit; split it "
                            "with line continuations", where=where, line=number)
    if "\0" in text:
        raise UserError("binary content (a NUL byte); this is not a Dockerfile", where=where,
                        line=text.count("\n", 0, text.index("\0")) + 1)
    return _Parser(text, where, build_args, in_context).parse()


def parse_file(path: str | Path, build_args: Mapping[str, str] | None = None,
               context: str | Path | None = None) -> Graph:
    """Parse the file at `path`; with `context` (the build context folder), source paths
    are checked against it for misspelt stage names (see `parse_text`)."""
    return parse_text(read_dockerfile(path), str(path), build_args,
                      context_lookup(context) if context is not None else None)


def onbuild_sources(triggers: Sequence[str]) -> list[str]:
    """Context paths that ONBUILD triggers (`COPY . /go/src/app`) read. A trigger we cannot
    read counts as reading the whole context."""
    try:
        found = parse_text("FROM scratch\n" + "\n".join(triggers) + "\n", "ONBUILD")
    except UserError:
        return ["."]
    return list(found.final.context_sources)
