"""Every setting a build takes, resolved in one place: CLI flags, then the config under the
collection's key (`ns.configure`, `invoke.yaml`, `INVOKE_<KEY>_*` environment variables),
then defaults. Values that come from the environment are strings and are checked here,
each mistake one line.

Invoke casts an environment string by the type of the config default (a bool default
makes "false" true; an int default raises a traceback on "abc"), so the config holds
`None` for every scalar and the real defaults live in `DEFAULTS` below.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

from ..dockerfile.model import Graph
from ..errors import UserError
from ..names import valid_ref
from ..progress.base import MODES
from ..records import record
from ..words import yes_or_no
from .project import stage_named
from .specs import (
    CacheSpec,
    OutputSpec,
    SecretSpec,
    ServiceSpec,
    SshSpec,
    cache_source,
    parse_cache,
    parse_output,
    parse_secret,
    parse_service,
    parse_ssh,
)

BUILDERS = ("auto", "buildkit", "classic")

DEFAULTS: dict[str, Any] = {
    "tags": {},  # stage -> ref or [refs]
    "build_args": {},
    "target": None,  # the final stage
    "no_cache": False,
    "push": False,
    "network": None,  # the engine's default, like `docker build`
    "jobs": 4,  # stages built at the same time: builds run on the engine, we mostly wait
    "builder": "auto",
    "progress": "auto",
    "pull": False,
    "cache_from": [],
    "cache_to": None,
    "secrets": [],  # id=ID,src=PATH | id=ID,env=VAR (BuildKit)
    "ssh": [],  # default | ID=SOCKET[,SOCKET] (BuildKit)
    "output": None,  # DIR | type=local,dest=DIR | type=tar,dest=FILE (BuildKit)
    "platform": None,  # os/arch[/variant][,...]: what the images are built for (default: the engine's)
    "buildkit_host": None,  # a BuildKit service: unix://PATH or tcp://HOST:PORT (else $BUILDKIT_HOST)
    "tlscacert": None,  # for a tcp:// BuildKit service, as buildctl's flags
    "tlscert": None,
    "tlskey": None,
}
# What goes into Invoke's config: None for scalars (see above), so env strings stay strings.
CONFIG_DEFAULTS: dict[str, Any] = {k: ({} if isinstance(v, dict) else None) for k, v in DEFAULTS.items()}


@record
class Settings:
    """What a build may vary."""

    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> refs
    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    network: str | None = None
    push: bool = False
    jobs: int = 4
    builder: str = "auto"
    progress: str = "auto"
    pull: bool = False
    cache_from: tuple[str, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    ssh: tuple[SshSpec, ...] = ()
    output: OutputSpec | None = None
    platforms: tuple[str, ...] = ()  # linux/arm64, ...; () is the engine's own
    cache_to: CacheSpec | None = None
    buildkit: ServiceSpec | None = None  # a BuildKit service to build on instead of the engine
    # How the user types this collection's tasks, for hints: "compimg." (or the collection's
    # name) under `invoke`, "compimg " under the `compimg` command. See `task`.
    task_prefix: str = "compimg."
    # What the user should hear before the build starts (one line each), e.g. a
    # `--build-arg NAME` whose NAME is not set.
    warnings: tuple[str, ...] = ()

    def task(self, name: str) -> str:
        """What the user types to run task `name` ("stage.build", "shell"): `app.shell`,
        `compimg shell`."""
        return f"{self.task_prefix}{name}"


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    found = yes_or_no(str(value)) if str(value).strip() else False
    if found is None:
        raise UserError(f"{name} {value!r}: write true or false")
    return found


def _positive(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise UserError(f"{name} {value!r}: give a whole number of at least 1")
    return number


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise UserError(f"{name} {value!r}: choose one of {', '.join(choices)}")
    return text


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]


def parse_platforms(value: Any, where: str = "--platform") -> tuple[str, ...]:
    """`linux/arm64`, `linux/amd64,linux/arm64` (or a list): each os/arch[/variant], as buildx
    writes them; a plain `arm64` means linux/arm64."""
    from ..dockerfile.model import Platform

    words = [w.strip() for w in (value.split(",") if isinstance(value, str) else list(value or [])) if w.strip()]
    found: list[str] = []
    for word in words:
        try:
            platform = str(Platform.parse(word if "/" in word else f"linux/{word}"))
        except ValueError:
            raise UserError(f"{where} {value}: '{word}' is not os/arch[/variant]; write e.g. linux/arm64") from None
        if platform not in found:
            found.append(platform)
    return tuple(found)


def _service(pick: Any, source: Any) -> ServiceSpec | None:
    """`buildkit_host` (flag, config, INVOKE_*), else $BUILDKIT_HOST as buildctl reads it."""
    address = pick("buildkit_host") or os.environ.get("BUILDKIT_HOST") or None
    tls = {key: pick(key) for key in ("tlscacert", "tlscert", "tlskey")}
    if address is None:
        given = [k for k, v in tls.items() if v]
        if given:
            raise UserError(f"{source(given[0])} is for a BuildKit service; give --buildkit-host (or BUILDKIT_HOST)")
        return None
    where = source("buildkit_host") if pick("buildkit_host") else "BUILDKIT_HOST"
    return parse_service(str(address), where, ca=tls["tlscacert"], cert=tls["tlscert"], key=tls["tlskey"])


def _spec_list(value: Any) -> list[str]:
    """Specs hold commas (`id=x,src=f`): a string is one spec, a list is several."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _secrets(values: list[str]) -> tuple[SecretSpec, ...]:
    found = {spec.id: spec for spec in map(parse_secret, values)}  # a later one (a flag) replaces
    return tuple(found.values())


def _ssh(values: list[str]) -> tuple[SshSpec, ...]:
    found = {spec.id: spec for spec in map(parse_ssh, values)}
    return tuple(found.values())


def parse_tags(values: Iterable[str], default_stage: str, graph: Graph,
               source: str = "--tag") -> dict[str, tuple[str, ...]]:
    """`STAGE=REF` or `REF` (the target) -> {stage: refs}, checking stage names and refs.
    `source` names where the values came from in messages (a flag, a config key)."""
    tags: dict[str, list[str]] = {}
    for value in values:
        if not value:
            raise UserError(f"{source} needs a value: write {source} REF or {source} STAGE=REF")
        stage, eq, ref = value.partition("=")
        if not eq:
            stage, ref = default_stage, value
        name = stage_named(graph, stage, f"{source} {value}")
        if not valid_ref(ref):
            raise UserError(f"{source} {value}: '{ref}' is not a valid image reference; "
                            "use lower-case name[:tag]")
        tags.setdefault(name, []).append(ref)
    return {k: tuple(v) for k, v in tags.items()}


def parse_build_args(values: Iterable[str], environ: Mapping[str, str] | None = None,
                     warnings: list[str] | None = None) -> dict[str, str]:
    """`KEY=VALUE`, or `KEY` alone to take the value from the environment (as docker build).
    A `KEY` that is not set there sets nothing, as in docker build (config or the
    Dockerfile's default holds), with one line in `warnings`."""
    env = os.environ if environ is None else environ
    args: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not key:
            raise UserError(f"--build-arg {value}: write KEY=VALUE, or KEY to take it from the environment")
        if not eq:
            if key not in env:
                if warnings is not None:
                    warnings.append(f"--build-arg {key}: {key} is not set in the environment, so the flag "
                                    f"sets nothing (as docker build); write {key}=VALUE or export {key}")
                continue
            val = env[key]
        args[key] = val
    return args


def _config_build_args(raw: Any, env_prefix: str | None) -> dict[str, str]:
    """Build args from config (`build_args: {NAME: value}`) and from `<PREFIX>_BUILD_ARGS_<NAME>`
    environment variables, read as the tags' are: Invoke maps a variable onto a key that a
    config file already has, and only then. The name is kept as written (build args are
    case-sensitive); it replaces a config key of the same name in any case."""
    args = {str(k): str(v) for k, v in dict(raw or {}).items()}
    if env_prefix:
        marker = f"{env_prefix}_BUILD_ARGS_"
        for var, value in sorted(os.environ.items()):
            name = var[len(marker):]
            if var.startswith(marker) and name:
                for same in [k for k in args if k.upper() == name.upper()]:
                    del args[same]
                args[name] = value
    return args


def _config_tags(raw: Any, env_prefix: str | None, graph: Graph, target: str) -> dict[str, tuple[str, ...]]:
    """Tags from config (`tags: {stage: ref or [refs]}`) and from `<PREFIX>_TAGS_<STAGE>`
    environment variables: Invoke maps env vars onto existing keys only, and `tags` is
    keyed by stage, so we read those ourselves. Each mistake names its source."""
    tags: dict[str, tuple[str, ...]] = {}
    for stage, refs in dict(raw or {}).items():
        values = [f"{stage}={ref}" for ref in ([refs] if isinstance(refs, str) else list(refs or []))]
        for name, found in parse_tags(values, target, graph, "config tags:").items():
            tags[name] = tags.get(name, ()) + found
    if env_prefix:
        marker = f"{env_prefix}_TAGS_"
        for var, ref in sorted(os.environ.items()):
            if var.startswith(marker) and var[len(marker):]:
                stage = var[len(marker):].lower()
                if not ref:
                    raise UserError(f"{var} is empty: give it an image reference, or unset it")
                for name, found in parse_tags([f"{stage}={ref}"], target, graph, f"{var}:").items():
                    tags[name] = found  # the environment replaces that stage's config tags
    return tags


def configured(section: Mapping[str, Any] | None, name: str, env_prefix: str | None) -> Any:
    """The configured value of `name`: `<env_prefix>_<NAME>` if set, else the config
    section's, else the default. We read the variable ourselves: Invoke loads only keys the
    running task's collections define, so for a task of the user's own (`release` with our
    build as its pre-task) it would be skipped in silence. Invoke's order is kept: the
    environment wins over config files."""
    if env_prefix:
        value = os.environ.get(f"{env_prefix}_{name.upper()}")
        if value is not None:
            return value
    found = (section or {}).get(name)
    return found if found is not None else DEFAULTS[name]


def resolve(graph: Graph, config: Mapping[str, Any] | None, *, target: str, tags: Iterable[str] = (),
            build_args: Iterable[str] = (), env_prefix: str | None = None, task_prefix: str = "compimg.",
            **flags: Any) -> Settings:
    """Flags (None: not given), then `config` (the section under the collection's key),
    then DEFAULTS. `target` is the stage that a bare `--tag REF` names."""
    section = dict(config or {})

    def pick(name: str) -> Any:
        if flags.get(name) is not None:
            return flags[name]
        return configured(section, name, env_prefix)

    def source(name: str) -> str:
        """Where `pick(name)` came from, as the user wrote it."""
        if flags.get(name) is not None:
            return "--" + name.replace("_", "-")
        env = f"{env_prefix}_{name.upper()}" if env_prefix else None
        if env and env in os.environ:
            return env
        return f"config {name}"

    merged_tags = _config_tags(section.get("tags"), env_prefix, graph, target)
    merged_tags.update(parse_tags(tags, target, graph))  # a flag replaces that stage's config tags
    args = _config_build_args(section.get("build_args"), env_prefix)
    warnings: list[str] = []
    args.update(parse_build_args(build_args, warnings=warnings))
    cache_to = parse_cache(str(pick("cache_to")), source("cache_to")) if pick("cache_to") else None
    return Settings(
        tags=merged_tags, build_args=args,
        no_cache=_bool(pick("no_cache"), source("no_cache")),
        network=pick("network") or None,
        push=_bool(pick("push"), source("push")),
        jobs=_positive(pick("jobs"), source("jobs")),
        builder=_choice(pick("builder"), source("builder"), BUILDERS),
        progress=_choice(pick("progress"), source("progress"), MODES),
        pull=_bool(pick("pull"), source("pull")),
        cache_from=tuple(dict.fromkeys(cache_source(ref) for ref in [
            *_spec_list(configured(section, "cache_from", env_prefix)), *_spec_list(flags.get("cache_from"))])),
        cache_to=cache_to,
        buildkit=_service(pick, source),
        platforms=parse_platforms(pick("platform"), source("platform")),
        secrets=_secrets([*_spec_list(configured(section, "secrets", env_prefix)), *_spec_list(flags.get("secrets"))]),
        ssh=_ssh([*_spec_list(configured(section, "ssh", env_prefix)), *_spec_list(flags.get("ssh"))]),
        output=parse_output(str(pick("output"))) if pick("output") else None,
        task_prefix=task_prefix,
        warnings=tuple(warnings),
    )
