"""What `--secret`, `--ssh` and `--output` say, read as `docker build` (BuildKit) reads them.
Pure: values in, checked dataclasses out, each mistake one line."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from ..errors import UserError
from ..names import service_address
from ..records import record


@record
class SecretSpec:
    """A secret a `RUN --mount=type=secret,id=ID` may read: a file's content or an
    environment variable's value, read only when BuildKit asks for it."""

    id: str
    path: str | None = None
    env: str | None = None

    def __repr__(self) -> str:  # never the value; the source is harmless to show
        return f"SecretSpec(id={self.id!r}, {'src=' + repr(self.path) if self.path else 'env=' + repr(self.env)})"


@record
class SshSpec:
    """An ssh agent a `RUN --mount=type=ssh[,id=ID]` reaches: agent sockets (`default`:
    $SSH_AUTH_SOCK)."""

    id: str
    paths: tuple[str, ...]


@record
class OutputSpec:
    """Where a build's result goes instead of the engine's image store: a folder (`local`)
    or one tar file (`tar`)."""

    type: str  # local, tar
    dest: str


def _fields(value: str, flag: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in value.split(","):
        key, eq, item = part.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{flag} {value}: '{part}' is not KEY=VALUE")
        found[key.strip().lower()] = item.strip()
    return found


def parse_secret(value: str, environ: Mapping[str, str] | None = None) -> SecretSpec:
    """`id=ID[,src=PATH|,env=VAR]` (also `source=`, `type=file|env`); `id=ID` alone reads the
    variable ID if it is set, as buildx does."""
    env = os.environ if environ is None else environ
    flag = "--secret"
    fields = _fields(value, flag)
    unknown = set(fields) - {"id", "src", "source", "env", "type"}
    if unknown:
        raise UserError(f"{flag} {value}: unknown key {sorted(unknown)[0]!r}; write id=ID,src=PATH or id=ID,env=VAR")
    secret_id = fields.get("id", "")
    if not secret_id:
        raise UserError(f"{flag} {value}: give the secret an id (id=ID), the name RUN --mount=type=secret,id=ID uses")
    kind = fields.get("type", "")
    source = fields.get("src") or fields.get("source")
    if kind == "env" and source and "env" not in fields:
        fields["env"] = source
        source = None
    if kind not in ("", "file", "env"):
        raise UserError(f"{flag} {value}: type is file or env")
    if source and fields.get("env"):
        raise UserError(f"{flag} {value}: give src=PATH or env=VAR, not both")
    if source:
        path = os.path.abspath(os.path.expanduser(source))
        if not os.path.isfile(path):
            raise UserError(f"{flag} {value}: {source} is not a file; give the path of the file that holds it")
        return SecretSpec(secret_id, path=path)
    variable = fields.get("env") or secret_id
    if variable not in env:
        raise UserError(f"{flag} {value}: no src=PATH, and the environment has no {variable}; "
                        f"write id={secret_id},src=PATH or export {variable}")
    return SecretSpec(secret_id, env=variable)


def parse_ssh(value: str, environ: Mapping[str, str] | None = None) -> SshSpec:
    """`default` ($SSH_AUTH_SOCK) or `ID=PATH` (an agent's socket). Docker also takes key files,
    several per id, which it loads into an agent of its own: here they go into yours (ssh-add)."""
    from ..engine.control.providers import connect_agent  # (only a build with --ssh needs it)

    env = os.environ if environ is None else environ
    ssh_id, eq, rest = value.partition("=")
    if not ssh_id:
        raise UserError(f"--ssh {value}: write default, or ID=SOCKET")
    paths = [p for p in rest.split(",") if p] if eq else []
    if not paths:
        sock = env.get("SSH_AUTH_SOCK")
        if not sock:
            raise UserError(f"--ssh {value}: no agent socket given and SSH_AUTH_SOCK is not set; start ssh-agent "
                            f"(eval $(ssh-agent); ssh-add), or write {ssh_id}=/path/to/agent.sock")
        paths = [sock]
    if len(paths) > 1:
        raise UserError(f"--ssh {value}: one agent socket per id; load the keys into one agent (ssh-add), "
                        f"or give each socket an id of its own (--ssh a=SOCK1 --ssh b=SOCK2)")
    checked = []
    for path in paths:
        full = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(full):
            raise UserError(f"--ssh {value}: {path} does not exist; give an ssh agent's socket")
        if os.path.isfile(full):
            raise UserError(f"--ssh {value}: {path} is a file; load the key into an agent (ssh-add {path}) "
                            f"and give the agent's socket (--ssh {ssh_id}=$SSH_AUTH_SOCK)")
        try:  # BuildKit would leave the step without a socket, and say nothing
            connect_agent(full).close()
        except OSError as exc:
            raise UserError(f"--ssh {value}: no ssh agent answers at {path} ({exc.strerror or exc}); start one "
                            f"(eval $(ssh-agent); ssh-add) and give its socket") from None
        checked.append(full)
    return SshSpec(ssh_id, tuple(checked))


STDOUT = "-"  # an output's dest that means standard output


def parse_output(value: str) -> OutputSpec:
    """`type=local,dest=DIR`, `type=tar,dest=FILE`, or a folder (`--output DIR`); `-` (and
    `dest=-` of a tar) is a tar on stdout, as `docker build -o - > out.tar`."""
    if "=" not in value:
        if not value:
            raise UserError("--output needs a value: write --output DIR or --output type=local,dest=DIR")
        if value == STDOUT:
            return OutputSpec("tar", STDOUT)
        return OutputSpec("local", os.path.abspath(os.path.expanduser(value)))
    fields = _fields(value, "--output")
    kind = fields.get("type", "local")
    if kind not in ("local", "tar"):
        raise UserError(f"--output {value}: type {kind!r} is not supported here; use local or tar "
                        "(or --tag and --push for an image)")
    dest = fields.get("dest")
    if not dest:
        raise UserError(f"--output {value}: give dest=PATH")
    if dest == STDOUT:
        if kind != "tar":
            raise UserError(f"--output {value}: files cannot go to stdout; write type=tar,dest=- (or -o -) for a "
                            "tar there, or give a folder")
        return OutputSpec("tar", STDOUT)
    return OutputSpec(kind, os.path.abspath(os.path.expanduser(dest)))


def unique_ids(specs: Iterable[SecretSpec | SshSpec], flag: str) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise UserError(f"{flag} id={spec.id} is given twice; keep one")
        seen.add(spec.id)


@record
class CacheSpec:
    """`--cache-to`: `inline` (cache metadata in the image itself), or `registry` (a cache
    image of its own at `ref`, `mode` min or max), as buildx writes it."""

    type: str  # inline, registry
    ref: str = ""
    mode: str = "min"


def parse_cache(value: str, flag: str = "--cache-to") -> CacheSpec:
    """`inline`, `type=inline`, or `type=registry,ref=REF[,mode=min|max]`."""
    if value.strip() == "inline":
        return CacheSpec("inline")
    fields = _fields(value, flag)
    kind = fields.get("type", "")
    if kind == "inline":
        return CacheSpec("inline")
    if kind != "registry":
        raise UserError(f"{flag} {value}: write inline, or type=registry,ref=REF[,mode=max]")
    if not fields.get("ref"):
        raise UserError(f"{flag} {value}: give ref=REF, the image the cache is pushed to")
    mode = fields.get("mode", "min")
    if mode not in ("min", "max"):
        raise UserError(f"{flag} {value}: mode is min or max")
    return CacheSpec("registry", fields["ref"], mode)


def cache_source(value: str) -> str:
    """A `--cache-from` as the image reference it reads: `REF` or `type=registry,ref=REF`."""
    if "=" not in value:
        return value
    fields = _fields(value, "--cache-from")
    if fields.get("type", "registry") != "registry" or not fields.get("ref"):
        raise UserError(f"--cache-from {value}: write REF, or type=registry,ref=REF")
    return fields["ref"]


@record
class ServiceSpec:
    """A BuildKit service (`buildkitd`) to build on: its address, and TLS files for tcp://."""

    address: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


def parse_service(address: str, where: str = "--buildkit-host", *, ca: str | None = None, cert: str | None = None,
                  key: str | None = None) -> ServiceSpec:
    """`unix://PATH` or `tcp://HOST:PORT`, as buildctl's --addr; TLS files must exist, and
    `cert` and `key` go together."""
    parsed = service_address(address)
    if parsed is None:
        shape = "tcp://HOST:PORT" if address.startswith("tcp://") else "unix:///path/to/buildkitd.sock or tcp://HOST:PORT"
        raise UserError(f"{where} {address}: write {shape}")
    if parsed[0] == "unix" and (ca or cert or key):
        raise UserError(f"{where} {address}: TLS files are for tcp:// addresses")
    if bool(cert) != bool(key):
        raise UserError(f"{where}: --tlscert and --tlskey go together (your client certificate and its key)")
    for flag, path in (("--tlscacert", ca), ("--tlscert", cert), ("--tlskey", key)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise UserError(f"{flag} {path}: no such file")
    return ServiceSpec(address, *(os.path.abspath(os.path.expanduser(p)) if p else None for p in (ca, cert, key)))
