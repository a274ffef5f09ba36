"""Heredocs (Dockerfile 1.4) lowered into plain Dockerfile that every builder runs alike.

This engine's BuildKit (Dockerfile 1.2), the classic builder and Podman have no heredocs,
so we do what BuildKit's `dispatchRun` and `dispatchCopy` do, in instructions they all
know:
- `COPY <<EOT /dest` (and ADD): the body (variables expanded unless the delimiter is
  quoted, `<<-` tabs stripped) becomes a generated context file, mode 0644 as BuildKit
  makes it, copied by the same COPY (its --chown/--chmod apply). Generated files live under
  `INLINE_FOLDER` at the top of the context tar, beside the user's files (which go under
  their own folder then), named by a digest of their content and mode;
- a shell-form RUN with heredocs runs `[SHELL..., text]` in exec form, with the stage's
  current SHELL: the body itself for `RUN <<EOF`; for anything else (`RUN python3 <<EOF`,
  several heredocs) the line with the heredocs put back, for the shell to read. That is
  the exact argument list BuildKit runs, so the image's history and config are those of
  BuildKit with Dockerfile 1.4;
- `RUN <<EOF` whose body starts with `#!` is a script: BuildKit mounts it as an executable
  file at /dev/pipes/EOF and runs that. For BuildKit we mount the generated file there;
  the classic builder has no mounts, so the RUN writes the script to /dev/pipes (a tmpfs,
  never part of the image; a folder in /tmp removed after the run when /dev is not
  writable for the user) and runs its `#!` interpreter on it, as the kernel would.

`Scopes` follows each stage's variables (base image Env, ARG, ENV) and SHELL as BuildKit's
dispatch does, for those expansions and shells; an external base image's config comes
from whoever can inspect it (`ImageConfig`), or counts as empty with /bin/sh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UserError
from ..records import record
from .lexer import Lex, LexError, declare_args
from .model import Arg, Copy, Env, Graph, Heredoc, Run, Shell, Stage
from .reader import heredoc_word

INLINE_FOLDER = ".compimg-heredoc"  # generated files, at the top of the context tar
DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIPES = "/dev/pipes"  # where BuildKit puts a `#!` heredoc script

# An external image's config as the engine reports it (`Env`, `Shell`, ...), or None.
ImageConfig = Callable[[str], Mapping[str, Any] | None]


@record
class InlineFile:
    """A file the lowering adds to the build context."""

    data: bytes
    mode: int


@record
class Scope:
    """What an instruction runs with: the stage's variables and shell at that point."""

    env: Mapping[str, str]
    shell: tuple[str, ...]


class Scopes:
    """Each stage's variables and shell, instruction by instruction, as BuildKit keeps
    them: the base (an earlier stage's final scope, or the image's config with PATH set),
    then ARG and ENV in order; SHELL changes the shell."""

    def __init__(self, graph: Graph, build_args: Mapping[str, str] | None = None,
                 image_config: ImageConfig | None = None) -> None:
        self.graph = graph
        self.build_args = dict(build_args or {})
        self.image_config = image_config
        self._final: dict[str, Scope] = {}
        self._before: dict[tuple[str, int], Scope] = {}  # (stage, position) -> scope
        self._meta: dict[str, str] | None = None

    def meta(self) -> dict[str, str]:
        """The global scope: platform ARGs, then the ARGs before the first FROM."""
        if self._meta is None:
            values = {k: self.build_args.get(k, v) for k, v in self.graph.platforms.args().items()}
            for arg in self.graph.global_args:
                values = self._declare(arg, values, None)
            self._meta = values
        return self._meta

    def before(self, stage: Stage, position: int) -> Scope:
        """The scope the stage's instruction at `position` (FROM is 0) runs in."""
        self._walk(stage)
        return self._before[(stage.name, position)]

    def _declare(self, arg: Arg, env: Mapping[str, str], inherited: Mapping[str, str] | None) -> dict[str, str]:
        try:
            return declare_args(arg.pairs, env, self.build_args, inherited, self.graph.escape)
        except LexError as exc:
            raise UserError(f"ARG: cannot expand its default ({exc}); fix the ${{...}}",
                            where=self.graph.path, line=arg.line) from None

    def _base(self, stage: Stage) -> Scope:
        if stage.base_stage:
            return self._walk(self.graph.stage(stage.base))
        config = (self.image_config(stage.base) if self.image_config and stage.base != "scratch" else None) or {}
        env = dict(entry.partition("=")[::2] for entry in config.get("Env") or ())
        env.setdefault("PATH", DEFAULT_PATH)
        return Scope(env, tuple(config.get("Shell") or DEFAULT_SHELL))

    def _walk(self, stage: Stage) -> Scope:
        if stage.name in self._final:
            return self._final[stage.name]
        scope = self._base(stage)
        env, shell = dict(scope.env), scope.shell
        for position, instruction in enumerate(stage.instructions[1:], 1):
            self._before[(stage.name, position)] = Scope(dict(env), shell)
            if isinstance(instruction, Arg):
                env = self._declare(instruction, env, self.meta())
            elif isinstance(instruction, Env):
                env = self._set_env(instruction, env)
            elif isinstance(instruction, Shell):
                shell = instruction.shell
        self._final[stage.name] = Scope(env, shell)
        return self._final[stage.name]

    def _set_env(self, instruction: Env, env: dict[str, str]) -> dict[str, str]:
        lex = Lex(self.graph.escape)
        try:  # every value is expanded with the variables before this ENV
            values = [(k, lex.word(v, env)) for k, v in instruction.pairs]
        except LexError as exc:
            raise UserError(f"ENV: cannot expand a value ({exc}); fix the ${{...}}",
                            where=self.graph.path, line=instruction.line) from None
        return {**env, **dict(values)}


def inline_path(data: bytes, mode: int, name: str) -> str:
    """Where a generated file goes in the context: its content and mode name the folder,
    so a changed body is a changed Dockerfile line (and a new cache key)."""
    digest = hashlib.sha256(b"%o\0" % mode + data).hexdigest()[:16]
    return f"{INLINE_FOLDER}/{digest}/{name}"


def copy_files(instruction: Copy, scope: Scope, path: str) -> list[tuple[str, InlineFile]]:
    """The files a COPY/ADD's heredoc sources become, with their context paths."""
    files = []
    for heredoc in instruction.inline:
        body = heredoc.body
        if heredoc.expand:
            try:
                body = Lex(skip_process_quotes=True).word(body, scope.env)
            except LexError as exc:
                raise UserError(f"the heredoc <<{heredoc.name} cannot be expanded ({exc}); quote the delimiter "
                                "(<<\"EOF\") to copy it as written", where=path, line=instruction.line) from None
        data = body.encode("utf-8", "surrogateescape")
        files.append((inline_path(data, 0o644, heredoc.name), InlineFile(data, 0o644)))
    return files


def script_of(run: Run) -> Heredoc | None:
    """The heredoc a RUN runs as a `#!` script (`RUN <<EOF` with a `#!` first line)."""
    single = heredoc_word(run.command)
    if single is None or not run.heredocs[0].body.startswith("#!"):
        return None
    return run.heredocs[0]


def shell_text(run: Run) -> str:
    """What BuildKit hands the shell for a RUN with heredocs (not a `#!` script)."""
    if heredoc_word(run.command) is not None:
        return run.heredocs[0].body  # `RUN <<EOF`: the body is the command
    return run.command + "".join(f"\n{h.content}{h.name}" for h in run.heredocs)


def run_line(run: Run, scope: Scope, flags: list[str], *, mounts: bool) -> tuple[str, list[tuple[str, InlineFile]]]:
    """The exec-form RUN line for a RUN with heredocs, and the files it needs. `mounts`:
    the builder can bind-mount a generated file (BuildKit), else a script is written by
    the RUN itself (classic builder, Podman)."""
    script = script_of(run)
    files: list[tuple[str, InlineFile]] = []
    if script is None:
        argv = [*scope.shell, shell_text(run)]
    elif mounts:
        data = script.body.encode("utf-8", "surrogateescape")
        source = inline_path(data, 0o755, script.name)
        files.append((source, InlineFile(data, 0o755)))
        flags = [*flags, f"--mount=type=bind,source={source},target={PIPES}/{script.name}"]
        argv = [*scope.shell, f"{PIPES}/{script.name}"]
    else:
        argv = [*scope.shell, _write_and_run(script)]
    return " ".join(["RUN", *flags, json.dumps(argv, ensure_ascii=False)]), files


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _interpreter(script: str) -> list[str]:
    """What the kernel runs for a `#!` line: the interpreter and, if any, the rest of the
    line as one argument."""
    line = script.split("\n", 1)[0][2:].strip(" \t")
    interpreter, _, argument = line.replace("\t", " ").partition(" ")
    return [interpreter, argument.strip(" \t")] if argument.strip(" \t") else [interpreter]


def _write_and_run(script: Heredoc) -> str:
    """Shell text that writes a `#!` script where BuildKit mounts it and runs it as the
    kernel would (its interpreter, the script's path), keeping its exit status. /dev is a
    tmpfs in build containers, never part of the image; it may be mounted noexec (Podman),
    hence the interpreter named here. A user who cannot write to /dev gets a folder in
    /tmp, removed afterwards."""
    name = script.name
    run = " ".join(_quote(word) for word in _interpreter(script.body))
    return (f"d={PIPES}; mkdir -p $d 2>/dev/null && [ -w $d ] || {{ d=/tmp/.compimg-pipes-$$; mkdir -p $d; }}; "
            f"printf %s {_quote(script.body)} > $d/{name} && chmod 755 $d/{name} && {run} $d/{name}; s=$?; "
            f"[ $d = {PIPES} ] || rm -rf $d; exit $s")
