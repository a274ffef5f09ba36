"""Compilation-image Dockerfiles (seed and native syntax) -> a checked `Graph`.

Tokenising (continuations, comments, the escape directive) is dockerfile-parse's job;
this module applies Docker's rules on top and reports every mistake as one
`Dockerfile:LINE: what is wrong; what to do` line. Pure: it never talks to an engine.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import WordSplitter

from .errors import UserError
from .graph import STAGE_NAME_MAX, STAGE_NAME_RE, Graph, Instruction, Stage, StageCopy, task_name_for

# Docker's scanner refuses longer lines (bufio.Scanner's 64 KiB token limit).
MAX_LINE_BYTES = 64 * 1024

DOCKER_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
OUR_INSTRUCTIONS = frozenset({"NAME"})

PLACEHOLDER = "{{{{stage:{}}}}}"  # -> {{stage:NAME}}, filled with an image ID at build time
PLACEHOLDER_RE = re.compile(r"\{\{stage:([a-z][a-z0-9_.-]*)\}\}")
_ESCAPE_DIRECTIVE_RE = re.compile(r"^\s*#\s*escape\s*=\s*(\\|`)\s*$", re.I)
_SEED_SOURCE_RE = re.compile(r"^([^:/\s]+):(.*)$")
_VARIABLE_RE = re.compile(r"\$(?:\{(\w+)(?:(:[-+])([^}]*))?\}|(\w+))")
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def placeholder(stage_name: str) -> str:
    return PLACEHOLDER.format(stage_name)


def fill_placeholders(text: str, image_ids: Mapping[str, str]) -> str:
    """Replace every `{{stage:NAME}}` with the exact image ID built for NAME."""
    return PLACEHOLDER_RE.sub(lambda m: image_ids[m.group(1)], text)


def read_dockerfile(path: str | Path) -> str:
    """The file's text; every way it can be unreadable becomes one UserError line."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file; pass the Dockerfile's path (cwd is {Path.cwd()})",
                        where=where) from None
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
    base: str = ""
    base_stage: bool = False
    instructions: list[Instruction] = field(default_factory=list)
    copies: list[StageCopy] = field(default_factory=list)
    context_sources: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Args:
    """A COPY/ADD split the way Docker does: leading --flags, then sources and dest."""

    flags: tuple[tuple[str, str], ...]  # (name, value) with the leading -- removed
    sources: tuple[str, ...]
    dest: str
    json_form: bool

    def flag(self, name: str) -> str | None:
        for key, value in self.flags:
            if key == name:
                return value
        return None

    def render(self, sources: tuple[str, ...], from_: str | None) -> str:
        """COPY arguments for `sources` only, with --from replaced by `from_`."""
        flags = [f"--{k}={v}" if v is not None else f"--{k}" for k, v in self.flags if k != "from"]
        if from_ is not None:
            flags.insert(0, f"--from={from_}")
        if self.json_form:
            body = json.dumps([*sources, self.dest], ensure_ascii=False)
        else:
            body = " ".join([*sources, self.dest])
        return " ".join([*flags, body])


class _Parser:
    def __init__(self, text: str, where: str, build_args: Mapping[str, str] | None) -> None:
        self.text = text if text.endswith("\n") else text + "\n"
        self.where = where
        self.build_args = dict(build_args or {})
        self.drafts: list[_Draft] = []
        self.global_args: list[Instruction] = []
        self.arg_values: dict[str, str] = {}
        self.escape = "\\"

    # --- errors -------------------------------------------------------------------------
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
        self.declared: dict[str, tuple[int, int]] = {}  # name -> (index, line)
        self.task_names: dict[str, tuple[str, int]] = {}
        self.generated: set[str] = set()  # names we made up for unnamed stages
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
            if keyword not in DOCKER_INSTRUCTIONS and keyword not in OUR_INSTRUCTIONS:
                raise self.fail(line, f"unknown instruction '{keyword}'; "
                                      "use a Dockerfile instruction or NAME")
            if keyword == "NAME":
                pending_name = (value.split()[0].lower(), line)
                continue
            if keyword == "FROM":
                current = self._open_stage(value, line, pending_name)
                pending_name = None
                continue
            if current is None:
                if keyword == "ARG":
                    self._global_arg(value, line)
                    continue
                raise self.fail(line, f"{keyword} before any FROM; start the stage "
                                      "with `NAME <stage>` and `FROM <image>`")
            if keyword == "COPY":
                lowered = self._copy(current, value, line)
            elif keyword == "ADD":
                lowered = self._add(current, value, line)
            else:
                lowered = (f"{keyword} {value}",)
            current.instructions.append(Instruction(keyword, value, line, lowered))

    def _global_arg(self, value: str, line: int) -> None:
        words = list(WordSplitter(value).split())
        if not words:
            raise self.fail(line, "ARG needs a name; write `ARG NAME[=default]`")
        for word in words:
            key, _, default = word.partition("=")
            self.arg_values[key] = self.build_args.get(key, default)
        self.global_args.append(Instruction("ARG", value, line, (f"ARG {value}",)))

    def _open_stage(self, value: str, line: int, pending_name: tuple[str, int] | None) -> _Draft:
        words, _ = self._split_from(value, line)
        index = len(self.drafts)
        name = next(n for n, (i, _) in self.declared.items() if i == index)
        draft = _Draft(name=name, index=index, line=pending_name[1] if pending_name else line)
        flags = [w for w in words if w.startswith("--")]
        image = expand(words[-1], self.arg_values)
        if not image:
            raise self.fail(line, f"FROM {words[-1]} expands to nothing; give the ARG a "
                                  "default or pass --build-arg")
        stage = self._stage_ref(image, line, index, as_base=True)
        if stage is not None:
            draft.base, draft.base_stage = stage, True
            base_text = placeholder(stage)
        else:
            draft.base, base_text = image, words[-1]
            draft.images.append(image)
        lowered = " ".join(["FROM", *flags, base_text])
        draft.instructions.append(Instruction("FROM", value, line, (lowered,)))
        self.drafts.append(draft)
        return draft

    def _stage_ref(self, ref: str, line: int, current: int, *, as_base: bool = False,
                   by_index: bool = False) -> str | None:
        """The stage `ref` names, or None if it names an image. Forward and self
        references are errors (Docker's classic builder only looks backwards)."""
        if by_index and ref.isdigit():
            number = int(ref)
            if number >= len(self.declared):
                known = ", ".join(f"{i}={n}" for n, (i, _) in self.declared.items())
                raise self.fail(line, f"unknown stage index {number}; known stages: {known}")
            ref = next(n for n, (i, _) in self.declared.items() if i == number)
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

    def _split_args(self, keyword: str, value: str, line: int) -> _Args:
        words = value.split()
        flags: list[tuple[str, str]] = []
        while words and words[0].startswith("--"):
            key, eq, flag_value = words.pop(0)[2:].partition("=")
            flags.append((key.lower(), flag_value if eq else None))  # type: ignore[arg-type]
        rest = " ".join(words)
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
        return _Args(tuple(flags), tuple(words[:-1]), words[-1], json_form)

    def _copy(self, draft: _Draft, value: str, line: int) -> tuple[str, ...]:
        args = self._split_args("COPY", value, line)
        explicit = args.flag("from")
        if explicit is not None:
            stage = self._stage_ref(explicit, line, draft.index, by_index=True)
            if stage is None:  # an image: Docker reads it; nothing to wire
                draft.images.append(explicit)
                return (f"COPY {args.render(args.sources, explicit)}",)
            draft.copies.append(StageCopy(stage, args.sources, args.dest, line))
            return (f"COPY {args.render(args.sources, placeholder(stage))}",)
        # Seed syntax: `stage:/abs/path` sources, possibly mixed with context sources.
        groups: list[tuple[str | None, list[str]]] = []
        for source in args.sources:
            origin, path = None, source
            match = _SEED_SOURCE_RE.match(source)
            if match and match.group(1).lower() in self.declared:
                origin = self._stage_ref(match.group(1), line, draft.index)
                path = match.group(2)
                if not path.startswith("/"):
                    raise self.fail(line, f"'{source}': the path after '{match.group(1)}:' must "
                                          f"be absolute; write {match.group(1)}:/{path}")
            if groups and groups[-1][0] == origin:
                groups[-1][1].append(path)
            else:
                groups.append((origin, [path]))
        if len(args.sources) > 1 and len(groups) > 1 and not args.dest.endswith("/") \
                and "$" not in args.dest:
            raise self.fail(line, f"COPY with several sources needs a directory destination "
                                  f"ending in '/'; write {args.dest}/")
        lowered = []
        for origin, paths in groups:
            if origin is None:
                draft.context_sources.extend(paths)
                lowered.append(f"COPY {args.render(tuple(paths), None)}")
            else:
                draft.copies.append(StageCopy(origin, tuple(paths), args.dest, line))
                lowered.append(f"COPY {args.render(tuple(paths), placeholder(origin))}")
        return tuple(lowered)

    def _add(self, draft: _Draft, value: str, line: int) -> tuple[str, ...]:
        args = self._split_args("ADD", value, line)
        draft.context_sources.extend(s for s in args.sources if not _URL_RE.match(s))
        return (f"ADD {value}",)

    def _freeze(self) -> Graph:
        stages = tuple(
            Stage(
                name=d.name, index=d.index, line=d.line,
                base=d.base, base_stage=d.base_stage, named=d.name not in self.generated,
                instructions=tuple(d.instructions), copies=tuple(d.copies),
                context_sources=tuple(d.context_sources), images=tuple(dict.fromkeys(d.images)),
            )
            for d in self.drafts
        )
        return Graph(path=self.where, stages=stages, global_args=tuple(self.global_args),
                     escape=self.escape)


def parse_text(text: str, where: str = "Dockerfile",
               build_args: Mapping[str, str] | None = None) -> Graph:
    """Parse Dockerfile text; `where` names it in messages."""
    for number, raw in enumerate(text.split("\n"), start=1):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size >= MAX_LINE_BYTES:
            raise UserError(f"line is {size} bytes, over Docker's 64 KiB limit; split it "
                            "with line continuations", where=where, line=number)
    if "\0" in text:
        raise UserError("binary content (a NUL byte); this is not a Dockerfile", where=where,
                        line=text.count("\n", 0, text.index("\0")) + 1)
    return _Parser(text, where, build_args).parse()


def parse_file(path: str | Path, build_args: Mapping[str, str] | None = None) -> Graph:
    return parse_text(read_dockerfile(path), str(path), build_args)
