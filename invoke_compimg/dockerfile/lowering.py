"""From the typed model to the Dockerfile text an engine is sent, and back.

Two lowerings, after BuildKit's `dockerfile2llb` dispatch:
- per stage (classic builder): one single-stage Dockerfile per stage, where other stages
  are `{{stage:NAME}}` placeholders, filled with exact image IDs at build time;
- multi-stage (BuildKit, and `parse --format native`): the stages a target needs, each
  `FROM ... AS name`, stage references by name.
A seed `COPY build:/a ./b dest/` becomes one COPY per origin (`COPY --from=build /a dest/`,
`COPY ./b dest/`), so Docker's own COPY semantics apply. Every line sent keeps the user's
instruction it came from (`Step.source`), so that errors quote the user's file.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .model import Copy, Graph, Instruction, Mount, Onbuild, Origin, Run, Stage

CONTEXT_PREFIX = "ctx/"  # BuildKit: the folder the context's files are sent under (multi_stage)
PLACEHOLDER_RE = re.compile(r"\{\{stage:([a-z][a-z0-9_.-]*)\}\}")


def placeholder(stage_name: str) -> str:
    return "{{stage:" + stage_name + "}}"


def fill_placeholders(text: str, image_ids: Mapping[str, str]) -> str:
    """Replace every `{{stage:NAME}}` with the exact image ID built for NAME."""
    return PLACEHOLDER_RE.sub(lambda m: image_ids[m.group(1)], text)


def keyword(line: str) -> str:
    """The instruction a Dockerfile line (or an engine's step line) holds: `RUN`, `COPY`..."""
    return line.split(" ", 1)[0].upper()


@dataclass(frozen=True)
class Step:
    text: str  # one line as sent to the engine
    source: Instruction  # the user's instruction it comes from (its line, its text)


@dataclass(frozen=True)
class Lowered:
    text: str  # the whole Dockerfile sent
    steps: tuple[Step, ...]  # classic: every line in order (global ARGs first)
    stages: Mapping[str, tuple[Step, ...]]  # multi-stage: each stage's lines, FROM first
    lines: Mapping[int, Step]  # 1-based line of `text` -> the step written there

    @staticmethod
    def of(entries: list[tuple[str, Step | None]], steps: tuple[Step, ...],
           stages: Mapping[str, tuple[Step, ...]]) -> Lowered:
        """From the file's lines in order, each with the step it writes (None: blank, header)."""
        while entries and not entries[0][0]:
            entries.pop(0)
        text = "\n".join(line for line, _ in entries) + "\n"
        return Lowered(text, steps, stages, {n: step for n, (_, step) in enumerate(entries, 1) if step})


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


def _header(graph: Graph) -> list[str]:
    return [f"# escape={graph.escape}"] if graph.escape != "\\" else []


def _copy_args(instruction: Copy, paths: tuple[str, ...], origin: Origin, name: Namer, prefix: str) -> str:
    flags = [f"--{k}={v}" if v is not None else f"--{k}" for k, v in instruction.flags]
    if origin.is_context:
        paths = tuple(under(prefix, p) for p in paths)
    if origin.stage:
        flags.insert(0, f"--from={name(origin.stage)}")
    elif origin.image:
        flags.insert(0, f"--from={origin.image}")
    if instruction.json_form:
        body = json.dumps([*paths, instruction.dest], ensure_ascii=False)
    else:
        body = " ".join([*paths, instruction.dest])
    return " ".join([*flags, body])


def _mount_flag(mount: Mount, name: Namer, prefix: str) -> str:
    options = [(k, name(v) if k == "from" and mount.origin.stage else v) for k, v in mount.options]
    if mount.type == "bind" and mount.origin.is_context and prefix:
        source = next((v for k, v in options if k in ("source", "src")), ".")
        options = [(k, v) for k, v in options if k not in ("source", "src")] + [("source", under(prefix, source))]
    return "--mount=" + ",".join(f"{k}={v}" for k, v in options)


def instruction_lines(instruction: Instruction, name: Namer, prefix: str = "") -> tuple[str, ...]:
    """What is sent for one instruction (several lines for a COPY of several origins).
    Stage references are written by `name`; context paths go under `prefix`."""
    if isinstance(instruction, Copy):
        return tuple(f"{instruction.keyword} {_copy_args(instruction, g.paths, g.origin, name, prefix)}"
                     for g in instruction.groups)
    rewritten = [m for m in getattr(instruction, "mounts", ()) if m.origin.stage or (prefix and m.origin.is_context)]
    if isinstance(instruction, Run) and rewritten:
        flags = []
        mounts = iter(instruction.mounts)
        for flag in instruction.flags:
            if flag[2:].lower().startswith("mount="):
                flag = _mount_flag(next(mounts), name, prefix)
            flags.append(flag)
        return (" ".join(["RUN", *flags, instruction.command]),)
    if isinstance(instruction, Onbuild):
        # Triggers keep the user's context paths: they are stored in the image for whoever
        # builds on it later, where the context is laid out as the user's own.
        return tuple(f"ONBUILD {line}" for line in instruction_lines(instruction.trigger, name))
    return (instruction.text,)


def _from_line(stage: Stage, name: Namer, alias: str | None) -> str:
    base = stage.from_
    ref = name(base.stage) if base.stage else base.written
    return " ".join(["FROM", *base.flags, ref] + ([f"AS {alias}"] if alias else []))


def _stage_steps(stage: Stage, name: Namer, alias: str | None, prefix: str = "") -> tuple[Step, ...]:
    steps = [Step(_from_line(stage, name, alias), stage.from_)]
    for instruction in stage.instructions[1:]:
        steps += [Step(text, instruction) for text in instruction_lines(instruction, name, prefix)]
    return tuple(steps)


def per_stage(graph: Graph, name: str) -> Lowered:
    """The single-stage Dockerfile sent to the classic builder for stage `name`: the
    global ARGs, then the stage, other stages as placeholders."""
    stage = graph.stage(name)
    steps = tuple(Step(arg.text, arg) for arg in graph.global_args)
    steps += _stage_steps(stage, placeholder, None)
    entries: list[tuple[str, Step | None]] = [(line, None) for line in _header(graph)]
    entries += [(s.text, s) for s in steps]
    return Lowered.of(entries, steps, {stage.name: steps})


def multi_stage(graph: Graph, stages: Iterable[Stage] | None = None, *, name_all: bool = True,
                context_prefix: str = "") -> Lowered:
    """One native multi-stage Dockerfile of `stages` (default: all), references by name.
    `name_all` gives every stage `AS name`, so BuildKit's progress names each one as we do;
    without it (the `native` format) only named or referenced stages get one.

    `context_prefix` moves every context path under that folder. BuildKit applies no
    `.dockerignore` to a context sent as a tar, so our Dockerfile would be seen (and be
    part of the cache key) of every `COPY . .`; with the user's files under `ctx/` and the
    Dockerfile beside that folder, it is not."""
    chosen = tuple(graph.stages if stages is None else stages)
    referenced = {dep for stage in chosen for dep in stage.depends_on}
    entries: list[tuple[str, Step | None]] = [(line, None) for line in _header(graph)]
    entries += [(arg.text, Step(arg.text, arg)) for arg in graph.global_args]
    per: dict[str, tuple[Step, ...]] = {}
    for stage in chosen:
        alias = stage.name if name_all or stage.named or stage.name in referenced else None
        per[stage.name] = _stage_steps(stage, lambda n: n, alias, context_prefix)
        entries += [("", None), *((s.text, s) for s in per[stage.name])]
    return Lowered.of(entries, tuple(s for steps in per.values() for s in steps), per)



def extraction(image: str, path: str, dest: str) -> tuple[Stage, Lowered]:
    """A one-stage Dockerfile that holds only `path` of the image named `image`, at `dest`
    (`FROM scratch` + `COPY --from`): exported as files, it copies an artifact out."""
    from .parse import parse_text  # the parser builds on the model, as this module does

    text = f"FROM scratch\nCOPY --from={image} {json.dumps(path)} {json.dumps(dest)}\n"
    graph = parse_text(text, "extract")
    return graph.final, multi_stage(graph)
