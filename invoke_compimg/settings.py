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
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .graph import Graph
from .project import stage_named

BUILDERS = ("auto", "buildkit", "classic")
PROGRESS = ("auto", "plain", "tty", "quiet")

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
}
# What goes into Invoke's config: None for scalars (see above), so env strings stay strings.
CONFIG_DEFAULTS: dict[str, Any] = {k: ({} if isinstance(v, dict) else None) for k, v in DEFAULTS.items()}


@dataclass(frozen=True)
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
    cache_to: str | None = None


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UserError(f"{name}={value!r}: write true or false")


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


def parse_tags(values: Iterable[str], default_stage: str, graph: Graph) -> dict[str, tuple[str, ...]]:
    """`STAGE=REF` or `REF` (the target) -> {stage: refs}, checking stage names and refs."""
    tags: dict[str, list[str]] = {}
    for value in values:
        if not value:
            raise UserError("--tag needs a value: write --tag REF or --tag STAGE=REF")
        stage, eq, ref = value.partition("=")
        if not eq:
            stage, ref = default_stage, value
        name = stage_named(graph, stage, f"--tag {value}")
        from docker.utils.build import match_tag  # the SDK's own rule, imported only to build

        if not match_tag(ref):
            raise UserError(f"--tag {value}: '{ref}' is not a valid image reference; "
                            "use lower-case name[:tag]")
        tags.setdefault(name, []).append(ref)
    return {k: tuple(v) for k, v in tags.items()}


def parse_build_args(values: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`KEY=VALUE`, or `KEY` alone to take the value from the environment (as docker build)."""
    env = os.environ if environ is None else environ
    args: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not key:
            raise UserError(f"--build-arg {value}: write KEY=VALUE, or KEY to take it from the environment")
        if not eq:
            if key not in env:
                raise UserError(f"--build-arg {key}: no value given and {key} is not set in the "
                                f"environment; write {key}=VALUE or export {key}")
            val = env[key]
        args[key] = val
    return args


def _config_tag_values(raw: Any, env_prefix: str | None) -> list[str]:
    values: list[str] = []
    for stage, refs in dict(raw or {}).items():
        for ref in [refs] if isinstance(refs, str) else list(refs or []):
            values.append(f"{stage}={ref}")
    if env_prefix:  # Invoke maps env vars onto existing keys only: tags are keyed by stage
        marker = f"{env_prefix}_TAGS_"
        for name, ref in os.environ.items():
            if name.startswith(marker) and name[len(marker):]:
                values.append(f"{name[len(marker):].lower()}={ref}")
    return values


def resolve(graph: Graph, config: Mapping[str, Any] | None, *, target: str, tags: Iterable[str] = (),
            build_args: Iterable[str] = (), env_prefix: str | None = None, **flags: Any) -> Settings:
    """Flags (None: not given), then `config` (the section under the collection's key),
    then DEFAULTS. `target` is the stage that a bare `--tag REF` names."""
    section = dict(config or {})

    def pick(name: str) -> Any:
        if flags.get(name) is not None:
            return flags[name]
        if section.get(name) is not None:
            return section[name]
        return DEFAULTS[name]

    merged_tags = parse_tags(_config_tag_values(section.get("tags"), env_prefix), target, graph)
    merged_tags.update(parse_tags(tags, target, graph))  # a flag replaces that stage's config tags
    args = {str(k): str(v) for k, v in dict(section.get("build_args") or {}).items()}
    args.update(parse_build_args(build_args))
    cache_to = pick("cache_to")
    if cache_to not in (None, "", "inline"):
        raise UserError(f"--cache-to {cache_to!r}: only 'inline' is supported (the cache goes into "
                        "the pushed image)")
    return Settings(
        tags=merged_tags, build_args=args,
        no_cache=_bool(pick("no_cache"), "no_cache"),
        network=pick("network") or None,
        push=_bool(pick("push"), "push"),
        jobs=_positive(pick("jobs"), "--jobs"),
        builder=_choice(pick("builder"), "--builder", BUILDERS),
        progress=_choice(pick("progress"), "--progress", PROGRESS),
        pull=_bool(pick("pull"), "pull"),
        cache_from=tuple(dict.fromkeys([*_list(section.get("cache_from")), *_list(flags.get("cache_from"))])),
        cache_to=cache_to or None,
    )
