"""From the typed model to the Dockerfile text an engine is sent, and back.

Two lowerings, after BuildKit's `dockerfile2llb` dispatch:
- per stage (classic builder): one single-stage Dockerfile per stage, where other stages
  are `{{stage:NAME}}` placeholders, filled with exact image IDs at build time;
- multi-stage (BuildKit, and `parse --format native`): the stages a target needs, each
  `FROM ... AS name`, stage references by name.
A seed `COPY build:/a ./b dest/` becomes one COPY per origin (`COPY --from=build /a dest/`,
`COPY ./b dest/`), so Docker's own COPY semantics apply. Heredocs become plain
instructions and generated context files (`heredocs.py`, `Lowered.files`). Every line sent
keeps the user's instruction it came from (`Step.source`), so that errors quote the
user's file.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field

from ..records import record
from .heredocs import ImageConfig, InlineFile, Scopes, copy_files, run_line, script_of
from .lexer import Lex
from .model import CONTEXT, PLATFORM_ARGS, Copy, Graph, Instruction, Mount, Onbuild, Origin, Run, Stage

CONTEXT_PREFIX = "ctx/"  # BuildKit: the folder the context's files are sent under (multi_stage)
PLACEHOLDER_RE = re.compile(r"\{\{stage:([a-z][a-z0-9_.-]*)\}\}")
_PLATFORM_VARIABLE = re.compile(r"\$\{?(?:" + "|".join(sorted(PLATFORM_ARGS)) + r")\b")


def placeholder(stage_name: str) -> str:
    return "{{stage:" + stage_name + "}}"


def fill_placeholders(text: str, image_ids: Mapping[str, str]) -> str:
    """Replace every `{{stage:NAME}}` with the exact image ID built for NAME."""
    return PLACEHOLDER_RE.sub(lambda m: image_ids[m.group(1)], text)


def keyword(line: str) -> str:
    """The instruction a Dockerfile line (or an engine's step line) holds: `RUN`, `COPY`..."""
    return line.split(" ", 1)[0].upper()


@record
class Step:
    text: str  # one line as sent to the engine
    source: Instruction  # the user's instruction it comes from (its line, its text)


@record
class Lowered:
    text: str  # the whole Dockerfile sent
    steps: tuple[Step, ...]  # classic: every line in order (global ARGs first)
    stages: Mapping[str, tuple[Step, ...]]  # multi-stage: each stage's lines, FROM first
    lines: Mapping[int, Step]  # 1-based line of `text` -> the step written there
    # Files the context must hold as well (heredocs): path in the context tar -> content and
    # mode. Their paths start with `INLINE_FOLDER`, which no user file is sent under.
    files: Mapping[str, InlineFile] = field(default_factory=dict)

    @staticmethod
    def of(entries: list[tuple[str, Step | None]], steps: tuple[Step, ...],
           stages: Mapping[str, tuple[Step, ...]], files: Mapping[str, InlineFile] | None = None) -> Lowered:
        """From the file's lines in order, each with the step it writes (None: blank, header);
        an entry of several lines (a heredoc kept as written) maps each of them to its step."""
        while entries and not entries[0][0]:
            entries.pop(0)
        physical = [(line, step) for text, step in entries for line in text.split("\n")]
        text = "\n".join(line for line, _ in physical) + "\n"
        return Lowered(text, steps, stages, {n: step for n, (_, step) in enumerate(physical, 1) if step},
                       dict(files or {}))


Namer = Callable[[str], str]  # how a reference to a stage is written


def under(prefix: str, path: str) -> str:
    """A context path moved under `prefix` (BuildKit: the context's files sit in a folder
    of their own, see `multi_stage`). `.`, `/` and `./a/../b` are cleaned as Docker does."""
    if not prefix:
        return path
    if path.startswith("$"):
        return prefix + path
    clean = posixpath.normpath("/" + path).lstrip("/")
    return prefix.rstrip("/") if clean in ("", ".") else prefix + clean


def _header(graph: Graph, *, syntax: bool = False) -> list[str]:
    """The parser directives sent: the escape character, and for BuildKit the `# syntax=`
    frontend the file asks for (BuildKit's built-in frontend hands the file to that one)."""
    lines = [f"# syntax={graph.syntax}"] if syntax and graph.syntax else []
    return lines + ([f"# escape={graph.escape}"] if graph.escape != "\\" else [])


class _Writer:
    """Writes stages as the lines one engine request sends."""

    def __init__(self, graph: Graph, name: Namer, prefix: str, *, mounts: bool, expand_platform: bool,
                 build_args: Mapping[str, str] | None, image_config: ImageConfig | None,
                 keep_heredocs: bool = False) -> None:
        self.graph = graph
        self.name = name
        self.prefix = prefix
        self.mounts = mounts  # the builder can bind-mount a generated file (BuildKit)
        self.expand_platform = expand_platform  # the builder does not define BuildKit's platform ARGs
        self.keep_heredocs = keep_heredocs  # write heredocs as the user did (for readers, Dockerfile 1.4)
        self.scopes = Scopes(graph, build_args, image_config)
        self.files: dict[str, InlineFile] = {}

    def stage_steps(self, stage: Stage, alias: str | None) -> tuple[Step, ...]:
        steps = [Step(self.from_line(stage, alias), stage.from_)]
        for position, instruction in enumerate(stage.instructions[1:], 1):
            lines = self.lines(instruction, stage, position)
            steps += [Step(text, instruction) for text in lines]
        return tuple(steps)

    def from_line(self, stage: Stage, alias: str | None) -> str:
        base = stage.from_
        ref = self.name(base.stage) if base.stage else base.written
        flags = base.flags
        if self.expand_platform:  # the classic builder knows no BUILDPLATFORM, TARGETOS...
            meta = self.scopes.meta()
            if not base.stage and _PLATFORM_VARIABLE.search(ref):
                ref = base.image
            flags = tuple(Lex(self.graph.escape).word(f, meta) if _PLATFORM_VARIABLE.search(f) else f
                          for f in flags)
        return " ".join(["FROM", *flags, ref] + ([f"AS {alias}"] if alias else []))

    def lines(self, instruction: Instruction, stage: Stage, position: int) -> tuple[str, ...]:
        """What is sent for one instruction (several lines for a COPY of several origins).
        Stage references are written by `name`; context paths go under `prefix`."""
        if self.keep_heredocs and instruction.heredocs:
            return (instruction.text + "".join(f"\n{h.content}{h.name}" for h in instruction.heredocs),)
        if isinstance(instruction, Copy):
            return self.copy_lines(instruction, stage, position)
        if isinstance(instruction, Run):
            return (self.run_line(instruction, stage, position),)
        if isinstance(instruction, Onbuild):
            # Triggers keep the user's context paths: they are stored in the image for whoever
            # builds on it later, where the context is laid out as the user's own.
            prefix, self.prefix = self.prefix, ""
            try:
                return tuple(f"ONBUILD {line}" for line in self.lines(instruction.trigger, stage, position))
            finally:
                self.prefix = prefix
        return (instruction.text,)

    def copy_lines(self, instruction: Copy, stage: Stage, position: int) -> tuple[str, ...]:
        groups = [(g.origin, self._paths(g.origin, g.paths)) for g in instruction.groups]
        if instruction.inline:
            scope = self.scopes.before(stage, position)
            files = copy_files(instruction, scope, self.graph.path)
            self.files.update(files)
            generated = tuple(path for path, _ in files)
            # Heredoc files come after the paths, in the same COPY when those are context files.
            if len(groups) == 1 and groups[0][0].is_context:
                groups[0] = (groups[0][0], groups[0][1] + generated)
            else:
                groups.append((CONTEXT, generated))
        return tuple(f"{instruction.keyword} {self._copy_args(instruction, paths, origin)}"
                     for origin, paths in groups)

    def _paths(self, origin: Origin, paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(under(self.prefix, p) for p in paths) if origin.is_context else paths

    def _copy_args(self, instruction: Copy, paths: tuple[str, ...], origin: Origin) -> str:
        flags = [f"--{k}={v}" if v is not None else f"--{k}" for k, v in instruction.flags]
        if origin.stage:
            flags.insert(0, f"--from={self.name(origin.stage)}")
        elif origin.image:
            flags.insert(0, f"--from={origin.image}")
        if instruction.json_form:
            body = json.dumps([*paths, instruction.dest], ensure_ascii=False)
        else:
            body = " ".join([*paths, instruction.dest])
        return " ".join([*flags, body])

    def run_line(self, run: Run, stage: Stage, position: int) -> str:
        flags = list(run.flags)
        rewritten = [m for m in run.mounts if m.origin.stage or (self.prefix and m.origin.is_context)]
        if rewritten:
            mounts = iter(run.mounts)
            flags = [self._mount_flag(next(mounts)) if f[2:].lower().startswith("mount=") else f for f in flags]
        if not run.heredocs:
            return " ".join(["RUN", *flags, run.command]) if rewritten else run.text
        line, files = run_line(run, self.scopes.before(stage, position), flags, mounts=self.mounts)
        self.files.update(files)
        return line

    def _mount_flag(self, mount: Mount) -> str:
        options = [(k, self.name(v) if k == "from" and mount.origin.stage else v) for k, v in mount.options]
        if mount.type == "bind" and mount.origin.is_context and self.prefix:
            source = next((v for k, v in options if k in ("source", "src")), ".")
            options = [(k, v) for k, v in options if k not in ("source", "src")] + [
                ("source", under(self.prefix, source))]
        return "--mount=" + ",".join(f"{k}={v}" for k, v in options)


def writes_files(stages: Iterable[Stage]) -> bool:
    """Whether lowering these stages adds generated files to the context (COPY heredocs,
    and `#!` RUN heredocs under BuildKit): the user's files then go under a folder of
    their own (`CONTEXT_PREFIX`), so that no `COPY . .` sees ours."""
    return any((isinstance(i, Copy) and i.inline) or (isinstance(i, Run) and i.heredocs and script_of(i))
               for stage in stages for i in stage.instructions)


def per_stage(graph: Graph, name: str, *, context_prefix: str = "", build_args: Mapping[str, str] | None = None,
              image_config: ImageConfig | None = None) -> Lowered:
    """The single-stage Dockerfile sent to the classic builder for stage `name`: the
    global ARGs, then the stage, other stages as placeholders. The classic builder knows
    no platform ARGs and no mounts: FROM is sent with those ARGs expanded, and a `#!`
    heredoc script is written by its RUN. `build_args` and `image_config` (an external
    base image's config) give heredoc bodies their variables and RUN heredocs their shell."""
    stage = graph.stage(name)
    writer = _Writer(graph, placeholder, context_prefix, mounts=False, expand_platform=True,
                     build_args=build_args, image_config=image_config)
    steps = tuple(Step(arg.text, arg) for arg in graph.global_args)
    steps += writer.stage_steps(stage, None)
    entries: list[tuple[str, Step | None]] = [(line, None) for line in _header(graph)]
    entries += [(s.text, s) for s in steps]
    return Lowered.of(entries, steps, {stage.name: steps}, writer.files)


def multi_stage(graph: Graph, stages: Iterable[Stage] | None = None, *, name_all: bool = True,
                context_prefix: str = "", build_args: Mapping[str, str] | None = None,
                image_config: ImageConfig | None = None, keep_heredocs: bool = False) -> Lowered:
    """One native multi-stage Dockerfile of `stages` (default: all), references by name.
    `name_all` gives every stage `AS name`, so BuildKit's progress names each one as we do;
    without it (the `native` format) only named or referenced stages get one.

    `context_prefix` moves every context path under that folder. BuildKit applies no
    `.dockerignore` to a context sent as a tar, so our Dockerfile would be seen (and be
    part of the cache key) of every `COPY . .`; with the user's files under `ctx/` and the
    Dockerfile beside that folder, it is not. `build_args` and `image_config` as for
    `per_stage`. `keep_heredocs` writes heredocs as the user did (Dockerfile 1.4 syntax)
    instead of lowering them, for people to read (`parse --format native`)."""
    chosen = tuple(graph.stages if stages is None else stages)
    referenced = {dep for stage in chosen for dep in stage.depends_on}
    writer = _Writer(graph, lambda n: n, context_prefix, mounts=True, expand_platform=False,
                     build_args=build_args, image_config=image_config, keep_heredocs=keep_heredocs)
    entries: list[tuple[str, Step | None]] = [(line, None) for line in _header(graph, syntax=True)]
    entries += [(arg.text, Step(arg.text, arg)) for arg in graph.global_args]
    per: dict[str, tuple[Step, ...]] = {}
    for stage in chosen:
        alias = stage.name if name_all or stage.named or stage.name in referenced else None
        per[stage.name] = writer.stage_steps(stage, alias)
        entries += [("", None), *((s.text, s) for s in per[stage.name])]
    return Lowered.of(entries, tuple(s for steps in per.values() for s in steps), per, writer.files)


def extraction(image: str, path: str, dest: str) -> tuple[Stage, Lowered]:
    """A one-stage Dockerfile that holds only `path` of the image named `image`, at `dest`
    (`FROM scratch` + `COPY --from`): exported as files, it copies an artifact out."""
    from .parse import parse_text  # the parser builds on the model, as this module does

    text = f"FROM scratch\nCOPY --from={image} {json.dumps(path)} {json.dumps(dest)}\n"
    graph = parse_text(text, "extract")
    return graph.final, multi_stage(graph)
