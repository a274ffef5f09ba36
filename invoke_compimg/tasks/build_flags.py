"""The flags every task that builds takes, declared once: how stages are built (builder,
build args, cache, network, platform, secrets, ssh agents, a BuildKit service) and how the
build is shown (`--progress`, `-q`).

`@operation(..., builds=True)` adds them to the task and to the Python API, and hands them
to the body as one `BuildFlags`; `BuildFlags.settings()` is what `Binding.settings` takes.
What only some builds do stays with the task that does it: `--tag`, `--push`, `--output`,
`--iidfile`, ... The per-stage tasks take only `OUTPUT_FLAGS`: Invoke runs their pre-tasks
with no flags, so a build setting given to one would build it on prerequisites made with
other settings, while how it is shown may differ."""

from __future__ import annotations

import inspect
from dataclasses import asdict, field, fields
from typing import Any

from ..errors import UserError
from ..records import record

PROGRESS_HELP = "auto (default), plain, tty or quiet"
QUIET_HELP = "print only errors and the image ID: --progress quiet (docker build -q)"
PLATFORM_HELP = "os/arch[,os/arch...] to build for (default: the engine's own), e.g. linux/arm64"
BUILD_ARG_HELP = "KEY=VALUE, or KEY to take it from the environment; repeatable"


def _about(help: str, *, repeatable: bool = False) -> dict[str, Any]:
    return {"help": help, "repeatable": repeatable}


@record
class BuildFlags:
    """The build flags as given (None, False: not given, so config or the default holds)."""

    build_arg: list[str] | None = field(default=None, metadata=_about(BUILD_ARG_HELP, repeatable=True))
    no_cache: bool = field(default=False, metadata=_about(
        "rebuild everything: no engine cache, no reuse of unchanged stages"))
    builder: str | None = field(default=None, metadata=_about("auto (default), buildkit or classic"))
    jobs: int | None = field(default=None, metadata=_about(
        "builds sent at the same time (default 4): stages with the classic builder, solves (the target's, each "
        "tagged stage's) with BuildKit and a BuildKit service"))
    pull: bool = field(default=False, metadata=_about("pull external base images even when they are present"))
    cache_from: list[str] | None = field(default=None, metadata=_about(
        "REF of an image to use as a cache source; repeatable", repeatable=True))
    cache_to: str | None = field(default=None, metadata=_about(
        "'inline': embed cache metadata in the built images (for --cache-from); type=registry,ref=REF[,mode=max] "
        "on a BuildKit service"))
    network: str | None = field(default=None, metadata=_about(
        "network of RUN steps: default, none or host (BuildKit); any network (classic)"))
    secret: list[str] | None = field(default=None, metadata=_about(
        "id=ID,src=PATH or id=ID,env=VAR: a secret RUN --mount=type=secret,id=ID reads (BuildKit); repeatable",
        repeatable=True))
    ssh: list[str] | None = field(default=None, metadata=_about(
        "default or ID=SOCKET: an ssh agent RUN --mount=type=ssh reaches (BuildKit); repeatable", repeatable=True))
    platform: str | None = field(default=None, metadata=_about(PLATFORM_HELP))
    buildkit_host: str | None = field(default=None, metadata=_about(
        "build on a BuildKit service: unix://PATH or tcp://HOST:PORT (default: $BUILDKIT_HOST)"))
    tlscacert: str | None = field(default=None, metadata=_about(
        "CA certificate that signed the BuildKit service's (tcp://)"))
    tlscert: str | None = field(default=None, metadata=_about(
        "client certificate for the BuildKit service (with --tlskey)"))
    tlskey: str | None = field(default=None, metadata=_about("client key for the BuildKit service (with --tlscert)"))
    progress: str | None = field(default=None, metadata=_about(PROGRESS_HELP))
    quiet: bool = field(default=False, metadata=_about(QUIET_HELP))

    def settings(self) -> dict[str, Any]:
        """As `Binding.settings` takes them: a flag not given is None, so config holds."""
        from .binding import strings

        given = asdict(self)
        return {**{k: v for k, v in given.items() if k not in ("build_arg", "secret", "quiet")},
                "build_args": given["build_arg"], "secrets": strings(self.secret), "ssh": strings(self.ssh),
                "cache_from": strings(self.cache_from), "no_cache": self.no_cache or None,
                "pull": self.pull or None, "progress": chosen_progress(self.progress, self.quiet)}


# How a build is shown: the flags the per-stage tasks take too.
OUTPUT_FLAGS = ("progress", "quiet")


def parameters(only: tuple[str, ...] | None = None) -> list[inspect.Parameter]:
    """The build flags as keyword parameters (of a task's or the API's signature)."""
    return [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=f.type)
            for f in fields(BuildFlags) if only is None or f.name in only]


def helps() -> dict[str, str]:
    """Each build flag's help, by its dashed name."""
    return {f.name.replace("_", "-"): f.metadata["help"] for f in fields(BuildFlags)}


def repeatable() -> tuple[str, ...]:
    return tuple(f.name for f in fields(BuildFlags) if f.metadata["repeatable"])


def names() -> set[str]:
    return {f.name for f in fields(BuildFlags)}


def chosen_progress(progress: str | None, quiet: bool) -> str | None:
    if quiet and progress not in (None, "quiet"):
        raise UserError(f"--quiet and --progress {progress} say two things; give one")
    return "quiet" if quiet else progress
