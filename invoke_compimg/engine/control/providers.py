"""What a session hands out besides files: secrets, the ssh agent, registry credentials.

Each answers only what the caller registered:
- `Secrets.GetSecret` (moby.buildkit.secrets.v1): the ids given, read from a file or an
  environment variable when asked; any other id is NOT_FOUND (BuildKit then reports the
  missing secret itself). Values never reach a message or a log of ours.
- `SSH.CheckAgent` / `SSH.ForwardAgent` (moby.sshforward.v1): the agent socket registered
  for an id (`default`: $SSH_AUTH_SOCK); the id of ForwardAgent comes in the metadata key
  `buildkit.ssh.id`. The stream carries the agent protocol (uint32 length, type byte, body);
  like BuildKit's own read-only agent we pass on only listing keys (11) and signing (13),
  and answer every other request (adding or removing keys, locking...) with FAILURE (5).
- `Auth.Credentials` (moby.filesync.v1, as auth.proto says): the user's login for the asked
  host only, read as the Docker SDK reads it (config.json, credential helpers); Docker Hub's
  `registry-1.docker.io` is looked up as `https://index.docker.io/v1/`, as docker/cli does.
  BuildKit's token methods are not served: gRPC's UNIMPLEMENTED makes the daemon fall back to
  Credentials.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from ...records import record

SSH_AGENT_FAILURE = 5
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENTC_SIGN_REQUEST = 13
AGENT_ALLOWED = frozenset({SSH_AGENTC_REQUEST_IDENTITIES, SSH_AGENTC_SIGN_REQUEST})
MAX_AGENT_MESSAGE = 256 * 1024  # OpenSSH's own limit


class NotFound(LookupError):
    """An id or host the caller did not register: gRPC NOT_FOUND."""


@record
class Secret:
    """A build secret: `id` as the Dockerfile names it (`RUN --mount=type=secret,id=...`),
    its value read from `path` or from the environment variable `env` when asked."""

    id: str
    path: str | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.env is None):
            raise ValueError(f"secret {self.id!r}: give exactly one of path and env")

    def value(self) -> bytes:
        if self.env is not None:
            found = os.environ.get(self.env)
            if found is None:
                raise NotFound(f"secret {self.id}: environment variable {self.env} is not set")
            return os.fsencode(found)
        assert self.path is not None
        try:
            with open(self.path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise NotFound(f"secret {self.id}: cannot read {self.path} ({exc.strerror})") from None


class Secrets:
    def __init__(self, secrets: Iterable[Secret]) -> None:
        self.by_id = {s.id: s for s in secrets}

    def get(self, secret_id: str) -> bytes:
        secret = self.by_id.get(secret_id)
        if secret is None:
            raise NotFound(f"secret {secret_id} not found")
        return secret.value()


class Agents:
    """ssh agent sockets by id."""

    def __init__(self, sockets: Mapping[str, str]) -> None:
        self.sockets = dict(sockets)

    def check(self, agent_id: str) -> None:
        self._connect(agent_id or "default").close()

    def _connect(self, agent_id: str) -> socket.socket:
        path = self.sockets.get(agent_id)
        if path is None:
            raise NotFound(f"no ssh agent registered as {agent_id!r}")
        try:
            return connect_agent(path)
        except OSError as exc:
            raise NotFound(f"ssh agent {agent_id!r}: cannot connect to its socket ({exc.strerror or exc})") from None

    def forward(self, agent_id: str, incoming: Iterable[bytes]) -> Iterator[bytes]:
        """The bytes to send back for the agent protocol bytes in `incoming`."""
        agent = self._connect(agent_id or "default")
        try:
            yield from _filtered_agent(agent, incoming)
        finally:
            agent.close()


def connect_agent(path: str) -> socket.socket:
    """A connection to the ssh agent socket `path` (OSError when nothing answers there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(path)
        sock.settimeout(None)
    except OSError:
        sock.close()
        raise
    return sock


def _filtered_agent(agent: socket.socket, incoming: Iterable[bytes]) -> Iterator[bytes]:
    """One request at a time: read a whole message from the daemon's bytes, pass it on if
    allowed (and relay the agent's whole answer) or answer FAILURE ourselves."""
    buffer = b""
    for chunk in incoming:
        buffer += chunk
        while len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if length == 0 or length > MAX_AGENT_MESSAGE:
                return  # not the agent protocol: end the stream
            if len(buffer) < 4 + length:
                break
            message, buffer = buffer[:4 + length], buffer[4 + length:]
            if message[4] not in AGENT_ALLOWED:
                yield struct.pack(">IB", 1, SSH_AGENT_FAILURE)
                continue
            agent.sendall(message)
            answer = _read_message(agent)
            if answer is None:
                return
            yield answer


def _read_message(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_AGENT_MESSAGE:
        return None
    body = _read_exactly(sock, length)
    return None if body is None else header + body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --- registry credentials ------------------------------------------------------------------

DOCKER_HUB_HOSTS = {"registry-1.docker.io", "docker.io", "index.docker.io"}
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@record
class Credentials:
    username: str = ""
    secret: str = ""


def docker_credentials(host: str) -> Credentials:
    """The user's login for `host` as the Docker SDK finds it (docker config and
    credential helpers); empty credentials when there is none."""
    import docker.auth

    from ..sdk import docker

    registry = DOCKER_HUB_KEY if host in DOCKER_HUB_HOSTS else host
    try:
        config = docker.auth.load_config()
        found = config.resolve_authconfig(registry)
    except Exception:  # a broken config file or helper: no credentials rather than no build
        return Credentials()
    if not found:
        return Credentials()
    token = found.get("IdentityToken") or found.get("identitytoken")
    if token:
        return Credentials("", str(token))
    return Credentials(str(found.get("Username") or found.get("username") or ""),
                       str(found.get("Password") or found.get("password") or ""))


CredentialsLookup = Callable[[str], Credentials]


class Registries:
    """Credentials for the hosts the caller allows (None: any host the user has a login for,
    each asked for itself only)."""

    def __init__(self, lookup: CredentialsLookup = docker_credentials, hosts: Iterable[str] | None = None) -> None:
        self.lookup = lookup
        self.hosts = None if hosts is None else frozenset(hosts)
        self.lock = threading.Lock()

    def credentials(self, host: str) -> Credentials:
        if self.hosts is not None and host not in self.hosts:
            return Credentials()
        with self.lock:  # credential helpers are processes; one at a time
            return self.lookup(host)
