"""Compilation-image Dockerfiles (seed and native syntax) -> a checked, typed `Graph`.

Three steps, as BuildKit's frontend takes them: `reader` splits the text into nodes
(BuildKit's parser), `instructions` types each node and checks its flags (BuildKit's
`instructions` package), and this module applies the stage rules: NAME and FROM declare
stages, every reference to a stage is resolved (seed `stage:/path` sources, `--from`,
`RUN --mount from=`, a FROM of an earlier stage), and FROM is expanded with the global
ARGs, the build args and BuildKit's automatic platform ARGs (`platforms`). Every mistake
is one `Dockerfile:LINE: what is wrong; what to do` line. It produces the typed model
only; what is sent to an engine is `lowering.py`'s business. Pure: it never talks to an
engine.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path

from ..errors import UserError
from ..records import record
from . import instructions, reader
from .lexer import Lex, LexError, declare_args
from .model import (
    CONTEXT,
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
    Platforms,
    Run,
    Stage,
    closest,
    task_name_for,
)

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


@record(frozen=False)
class _Draft:
    """A stage while it is being read."""

    name: str
    index: int
    line: int
    instructions: list[Instruction] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str, where: str, build_args: Mapping[str, str] | None,
                 in_context: ContextLookup | None, platforms: Platforms) -> None:
        self.text = text
        self.where = where
        self.in_context = in_context
        self.build_args = dict(build_args or {})
        self.platforms = platforms
        self.escape = "\\"
        self.drafts: list[_Draft] = []
        self.global_args: list[Arg] = []
        # BuildKit's global scope: the platform ARGs (a build arg may override them), then
        # each global ARG's value.
        self.arg_values = {k: self.build_args.get(k, v) for k, v in platforms.args().items()}
        self.declared: dict[str, tuple[int, int]] = {}  # name -> (index, line)
        self.by_index: list[str] = []
        self.task_names: dict[str, tuple[str, int]] = {}
        self.generated: set[str] = set()  # names we made up for unnamed stages

    def fail(self, line: int, message: str) -> UserError:
        return UserError(message, where=self.where, line=line)

    # --- entry point --------------------------------------------------------------------
    def parse(self) -> Graph:
        document = reader.read(self.text, self.where)
        self.escape = document.escape
        parsed = [instructions.parse(node, self.where, document.escape) for node in document.nodes]
        self._declare_stages(parsed)
        self._read(parsed)
        if not self.drafts:
            raise self.fail(parsed[0].line, "no FROM: the file defines no stage; "
                                            "add `NAME <stage>` and `FROM <image>`")
        return self._freeze(document.syntax)

    def _declare_stages(self, parsed: Sequence[Instruction]) -> None:
        """First pass: every stage's name and line, so later references can be told apart
        from images and forward references reported with both lines."""
        pending: tuple[str, int] | None = None
        index = 0
        for instruction in parsed:
            keyword, line = instruction.keyword, instruction.line
            if keyword == "NAME":
                if pending is not None:
                    raise self.fail(pending[1], f"NAME {pending[0]} is not followed by FROM; "
                                                "put the stage's FROM right after its NAME")
                pending = (self._check_name(instruction.value, line), line)
                continue
            if pending is not None and keyword != "FROM":
                raise self.fail(pending[1], f"NAME {pending[0]} is not followed by FROM "
                                            f"(line {line} is {keyword}); put FROM right after NAME")
            if not isinstance(instruction, From):
                continue
            name, named_at = pending if pending else (None, line)
            if instruction.alias is not None:
                alias = self._check_name(instruction.alias, line)
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

    # --- second pass: stages and their references ---------------------------------------
    def _read(self, parsed: Sequence[Instruction]) -> None:
        current: _Draft | None = None
        pending_name: tuple[str, int] | None = None
        for instruction in parsed:
            if instruction.keyword == "NAME":
                pending_name = (instruction.value.lower(), instruction.line)
            elif isinstance(instruction, From):
                current = self._open_stage(instruction, pending_name)
                pending_name = None
            elif current is None:
                if not isinstance(instruction, Arg):
                    raise self.fail(instruction.line, f"{instruction.keyword} before any FROM; start the stage "
                                                      "with `NAME <stage>` and `FROM <image>`")
                self._global_arg(instruction)
            else:
                current.instructions.append(self._resolve(current, instruction))

    def _global_arg(self, arg: Arg) -> None:
        """BuildKit's meta ARGs: a build arg wins, else the default expanded with the
        values so far; an ARG with neither stays unset."""
        try:
            self.arg_values = declare_args(arg.pairs, self.arg_values, self.build_args, escape=self.escape)
        except LexError as exc:
            raise self.fail(arg.line, f"ARG: cannot expand its default ({exc}); fix the ${{...}}") from None
        self.global_args.append(arg)

    def _expand(self, word: str, line: int, what: str) -> str:
        try:
            return Lex(self.escape).word(word, self.arg_values)
        except LexError as exc:
            raise self.fail(line, f"{what}: cannot expand {word!r} ({exc}); fix the ${{...}}") from None

    def _open_stage(self, base: From, pending_name: tuple[str, int] | None) -> _Draft:
        index = len(self.drafts)
        draft = _Draft(name=self.by_index[index], index=index,
                       line=pending_name[1] if pending_name else base.line)
        image = self._expand(base.written, base.line, f"FROM {base.written}")
        if not image:
            raise self.fail(base.line, f"FROM {base.written} expands to nothing; give the ARG a "
                                       "default or pass --build-arg")
        stage = self._stage_ref(image, base.line, index, as_base=True)
        draft.instructions.append(dataclasses.replace(base, image=stage or image, stage=stage))
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

    def _resolve(self, draft: _Draft, instruction: Instruction) -> Instruction:
        """The instruction with its references to stages resolved."""
        if isinstance(instruction, Copy):
            return self._resolve_copy(draft, instruction)
        if isinstance(instruction, Run) and instruction.mounts:
            return dataclasses.replace(instruction, mounts=tuple(
                self._resolve_mount(draft, m, instruction.line) for m in instruction.mounts))
        if isinstance(instruction, Onbuild):
            return dataclasses.replace(instruction, trigger=self._resolve(draft, instruction.trigger))
        return instruction

    def _resolve_mount(self, draft: _Draft, mount: Mount, line: int) -> Mount:
        if mount.origin.kind != "ref":
            return mount
        return dataclasses.replace(mount, origin=self._origin(mount.origin.ref, line, draft.index))

    def _resolve_copy(self, draft: _Draft, copy: Copy) -> Copy:
        groups: list[CopyGroup] = []
        for group in copy.groups:
            if group.origin.kind == "ref":
                groups.append(CopyGroup(self._origin(group.origin.ref, copy.line, draft.index), group.paths))
            elif copy.keyword == "COPY" and group.origin.is_context:
                groups += self._seed_groups(draft, group.paths, copy.line)
            else:
                groups.append(group)
        # The lowering sends one COPY per origin (and one for heredoc files): each must go
        # to a directory then, as Docker requires of a COPY of several sources.
        sources = sum(len(g.paths) for g in groups) + len(copy.inline)
        pieces = len(groups) + (1 if copy.inline and any(not g.origin.is_context for g in groups) else 0)
        dest = copy.dest
        if sources > 1 and pieces > 1 and not dest.endswith("/") and "$" not in dest:
            raise self.fail(copy.line, f"{copy.keyword} with several sources needs a directory destination "
                                       f"ending in '/'; write {dest}/")
        return dataclasses.replace(copy, groups=tuple(groups))

    def _seed_groups(self, draft: _Draft, sources: Sequence[str], line: int) -> list[CopyGroup]:
        """Seed syntax: `stage:/abs/path` sources, possibly mixed with context sources."""
        groups: list[tuple[Origin, list[str]]] = []
        for source in sources:
            origin, path = CONTEXT, source
            prefix, colon, rest = source.partition(":")
            seed = bool(colon) and bool(prefix) and "/" not in prefix and not any(c.isspace() for c in prefix)
            if seed and prefix.lower() in self.declared:
                origin = Origin("stage", self._stage_ref(prefix, line, draft.index) or "")
                path = rest
                if not path.startswith("/"):
                    raise self.fail(line, f"'{source}': the path after '{prefix}:' must "
                                          f"be absolute; write {prefix}:/{path}")
            elif seed and rest.startswith("/"):
                self._check_misspelt_stage(source, prefix, rest, line)
            if groups and groups[-1][0] == origin:
                groups[-1][1].append(path)
            else:
                groups.append((origin, [path]))
        return [CopyGroup(origin, tuple(paths)) for origin, paths in groups]

    def _check_misspelt_stage(self, source: str, name: str, path: str, line: int) -> None:
        """`COPY buidl:/x .`: a context path that looks like a stage's path, with a name one
        or two edits from a stage, is a typo unless the context really has that path. Only
        checked when the caller says what the context holds (`in_context`)."""
        near = closest(name.lower(), self.declared)
        if near is None or self.in_context is None or self.in_context(source):
            return
        raise self.fail(line, f"'{source}' is not in the build context and '{name}' is not a stage; "
                              f"did you mean stage '{near}'? (write {near}:{path})")

    def _freeze(self, syntax: str | None) -> Graph:
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
                     escape=self.escape, syntax=syntax, platforms=self.platforms)


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


def _check_text(text: str, where: str) -> None:
    for number, raw in enumerate(text.split("\n"), start=1):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size >= reader.MAX_LINE_BYTES:
            raise UserError(f"line is {size} bytes, over Docker's 64 KiB limit; split it "
                            "with line continuations", where=where, line=number)
    if "\0" in text:
        raise UserError("binary content (a NUL byte); this is not a Dockerfile", where=where,
                        line=text.count("\n", 0, text.index("\0")) + 1)


def parse_text(text: str, where: str = "Dockerfile", build_args: Mapping[str, str] | None = None,
               in_context: ContextLookup | None = None, platforms: Platforms | None = None) -> Graph:
    """Parse Dockerfile text; `where` names it in messages. `in_context` says whether the
    build context holds a path: given it, `COPY buidl:/x .` (no such stage, no such path)
    is an error that suggests stage 'build'. `platforms` gives the automatic platform ARGs
    (TARGETOS, BUILDPLATFORM, ...) their values (default: linux/amd64 for both)."""
    _check_text(text, where)
    return _Parser(text, where, build_args, in_context, platforms or Platforms()).parse()


def parse_instructions(text: str, where: str = "Dockerfile") -> list[Instruction]:
    """Every instruction of a Dockerfile, typed and checked one by one (keywords, flags,
    arguments), without the stage rules: what BuildKit's parser and `instructions`
    package accept."""
    _check_text(text, where)
    document = reader.read(text, where)
    return [instructions.parse(node, where, document.escape) for node in document.nodes]


def parse_file(path: str | Path, build_args: Mapping[str, str] | None = None,
               context: str | Path | None = None, platforms: Platforms | None = None) -> Graph:
    """Parse the file at `path`; with `context` (the build context folder), source paths
    are checked against it for misspelt stage names (see `parse_text`)."""
    return parse_text(read_dockerfile(path), str(path), build_args,
                      context_lookup(context) if context is not None else None, platforms)


def onbuild_sources(triggers: Sequence[str]) -> list[str]:
    """Context paths that ONBUILD triggers (`COPY . /go/src/app`) read. A trigger we cannot
    read counts as reading the whole context."""
    try:
        found = parse_text("FROM scratch\n" + "\n".join(triggers) + "\n", "ONBUILD")
    except UserError:
        return ["."]
    return list(found.final.context_sources)
