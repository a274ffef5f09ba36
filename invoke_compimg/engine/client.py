"""Every conversation with the Docker engine, through the Docker SDK's low-level API.

Engine and SDK failures are turned into one-line `EngineError`s here, in one place,
keeping the original exception as the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import requests.exceptions
import urllib3.exceptions

from ..errors import EngineError
from ..names import normalise_ref
from ..procs import owner, owner_gone
from .sdk import docker, has_paramiko, load_paramiko

LABEL_PROJECT = "compimg.project"  # the project an image or container belongs to
LABEL_TEMPORARY = "compimg.temporary"  # containers we create only to copy files out or
# for a shell; the value says who made it (`procs.owner()`), so a later run can tell
# leftovers of a killed run from containers that a run going on right now still uses.

NEVER_RUN = ["/compimg-container-is-never-started"]
DATA_CHUNK = 1 << 20


SSH_CLIENT_VARIABLE = "COMPIMG_SSH_CLIENT"


def connect(version: str = "auto") -> docker.APIClient:
    """A low-level client for the engine named by DOCKER_HOST (TLS settings included).

    For `ssh://` the SDK has two transports: paramiko (in process; reads ~/.ssh/config,
    ~/.ssh/known_hosts and the usual keys, refuses unknown hosts) and the system `ssh`
    client (`ssh ... docker system dial-stdio`, with the user's whole OpenSSH setup: agent,
    ProxyJump, ...). COMPIMG_SSH_CLIENT=1 picks the system client, 0 paramiko; unset, paramiko
    when it is installed, else the system client."""
    params = docker.utils.kwargs_from_env()
    url = str(params.get("base_url") or "")
    if url.startswith("ssh://"):
        params["use_ssh_client"] = use_ssh_client()
        if not params["use_ssh_client"]:
            load_paramiko()
        if params["use_ssh_client"]:
            _probe_ssh(url)  # ssh's own complaint, as our one line (the SDK lets it reach stderr)
    try:
        # Asked "auto", the SDK asks the engine's /version and throws the answer away; we ask
        # once ourselves and keep it (`kind`): one request fewer on every command.
        api = docker.APIClient(version=version if version != "auto" else MINIMUM_API_VERSION, **params)
        if version == "auto":
            found = api.version(api_version=False)
            api._version = str(found["ApiVersion"])
            _kinds[api.base_url] = _kind_of(found)
    except (docker.errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        if url.startswith("ssh://"):
            raise EngineError(f"cannot reach the Docker engine at {address()} through ssh ({_reason(exc)}); "
                              f"check that `ssh {_ssh_target(url)} docker version` works") from exc
        reason = _reason(exc)
        advice = ("ask for access to its socket (e.g. join the `docker` group) or run as root"
                  if reason == "permission denied" else "start Docker, or set DOCKER_HOST to the engine to use")
        raise EngineError(f"cannot reach the Docker engine at {address()} ({reason}); {advice}") from exc
    except Exception as exc:  # paramiko's own exceptions come out of the constructor unwrapped
        if not url.startswith("ssh://"):
            raise
        raise EngineError(_ssh_failure(url, exc)) from exc
    return api


MINIMUM_API_VERSION = "1.24"  # the SDK's own minimum; replaced by the engine's at once


def use_ssh_client() -> bool:
    """Which ssh transport: see `connect`."""
    chosen = os.environ.get(SSH_CLIENT_VARIABLE, "").strip().lower()
    if chosen in ("1", "true", "yes", "on"):
        return True
    if chosen in ("0", "false", "no", "off"):
        if not has_paramiko():
            raise EngineError(f"{SSH_CLIENT_VARIABLE}={chosen} asks for paramiko, which is not installed; "
                              f"pip install paramiko, or set {SSH_CLIENT_VARIABLE}=1 to use the ssh command")
        return False
    if chosen:
        raise EngineError(f"{SSH_CLIENT_VARIABLE} {chosen!r}: write 1 (the ssh command) or 0 (paramiko)")
    return not has_paramiko()


def _ssh_target(url: str) -> str:
    """`ssh://user@host:port` -> `-p port user@host`, as one would type it."""
    rest = url[len("ssh://"):].split("/", 1)[0]
    host, _, port = rest.rpartition(":") if rest.rfind(":") > rest.rfind("]") else (rest, "", "")
    return f"-p {port} {host}" if port else host


def _ssh_failure(url: str, exc: BaseException) -> str:
    """Paramiko's exceptions (and socket errors) as one line that says what to check."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:200]
    if name == "NoValidConnectionsError" or isinstance(exc, ConnectionError):
        what, check = "nothing answers ssh there", "check the host and port, and that sshd runs"
    elif name in ("AuthenticationException", "BadAuthenticationType", "PasswordRequiredException"):
        what, check = "the server refused our keys", "check the user name and that your key is authorised there"
    elif name == "BadHostKeyException" or "known_hosts" in text:
        what, check = "unknown or changed host key", "connect once with `ssh` to check and accept the host key"
    elif isinstance(exc, OSError):
        what, check = _reason(exc), "check the host name and port"
    else:
        what, check = name, "check that `ssh` to it works"
    return (f"cannot reach the Docker engine at {address()} through ssh ({what}: {text}); {check} "
            f"(`ssh {_ssh_target(url)} docker version`)")


_ssh_checked: set[str] = set()


def _probe_ssh(url: str) -> None:
    """Run the SDK's own command once per address (`ssh ... docker system dial-stdio`, input
    closed so it ends at once), keeping ssh's message for our one line."""
    if url in _ssh_checked:
        return
    import subprocess  # only for ssh://

    target = _ssh_target(url).split()
    user_host = target[-1]
    args = ["ssh", *target[:-1]]
    if "@" in user_host:
        user, user_host = user_host.split("@", 1)
        args += ["-l", user]
    try:
        done = subprocess.run([*args, "--", user_host, "docker system dial-stdio"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot reach the Docker engine at {address()} through ssh ({_reason(exc)}); "
                          "check that the `ssh` command is installed and the host answers") from exc
    if done.returncode == 255:  # ssh's own failure, not the remote command's
        said = " ".join((done.stderr.strip().splitlines() or ["ssh failed"])[-1].split())
        raise EngineError(f"cannot reach the Docker engine at {address()} through ssh ({said}); "
                          f"check that `ssh {_ssh_target(url)} docker version` works")
    if done.returncode != 0:
        said = " ".join((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1].split())
        raise EngineError(f"cannot reach the Docker engine at {address()}: `docker system dial-stdio` failed "
                          f"on the ssh host ({said}); check that Docker's CLI is installed there and its "
                          "engine runs")
    _ssh_checked.add(url)


def address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Permission denied", "No such file or directory", "Connection refused",
                   "Name or service not known", "timed out", "Connection broken", "Connection aborted"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:200]


def _ssh_errors() -> tuple[type[BaseException], ...]:
    """Paramiko's own exceptions, raised mid-request when an ssh:// connection drops."""
    try:
        import paramiko
    except ImportError:
        return ()
    return (paramiko.SSHException,)


_SSH_ERRORS = _ssh_errors()


@contextlib.contextmanager
def engine_errors(what: str, *, where: str | None = None, line: int | None = None) -> Iterator[None]:
    """Map SDK and transport errors raised inside the block to one EngineError line
    (`where:line: what: reason`), keeping the original as the cause."""
    try:
        yield
    except EngineError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise EngineError(f"{what}: no such image ({_explanation(exc)})", where=where, line=line) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{what}: {_explanation(exc)}", where=where, line=line) from exc
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
            docker.errors.DockerException, *_SSH_ERRORS) as exc:
        raise EngineError(f"{what}: lost the Docker engine at {address()} ({_reason(exc)}); "
                          "check that it is running, then retry", where=where, line=line) from exc


def _explanation(exc: docker.errors.APIError) -> str:
    text = exc.explanation if isinstance(exc.explanation, str) else str(exc)
    return " ".join(str(text).split())


@dataclass(frozen=True)
class EngineKind:
    """What answers at DOCKER_HOST, from `/version` (asked once per address)."""

    podman: bool  # Podman's Docker-compatible service (`Podman Engine` component)
    os: str  # linux, windows
    version: str

    @property
    def buildkit(self) -> bool:
        """Does `/build?version=2` run BuildKit? Docker on Linux does; Podman answers it
        with its own classic builder, and Windows engines have none."""
        return not self.podman and self.os == "linux"

    @property
    def name(self) -> str:
        return f"Podman {self.version}" if self.podman else f"Docker {self.version} ({self.os})"


_kinds: dict[str, EngineKind] = {}


def kind(api: docker.APIClient) -> EngineKind:
    if api.base_url not in _kinds:
        with engine_errors("asking the engine its version"):
            _kinds[api.base_url] = _kind_of(api.version())
    return _kinds[api.base_url]


def _kind_of(found: Mapping[str, Any]) -> EngineKind:
    components = {c.get("Name", ""): c for c in found.get("Components") or []}
    podman = "Podman Engine" in components
    version = str((components.get("Podman Engine") or {}).get("Version") or found.get("Version") or "?")
    return EngineKind(podman, str(found.get("Os") or "linux").lower(), version)


def pull(api: docker.APIClient, ref: str, on_event: Callable[[BuildEvent], None]) -> None:
    """Pull `ref` through the engine (with the credentials the SDK finds for it)."""
    repository, _, tag_ = _split_ref(ref)
    with engine_errors(f"pulling {ref}"):
        for message in api.pull(repository, tag=tag_ or "latest", stream=True, decode=True):
            if "error" in message:
                raise EngineError(f"pulling {ref}: {message['error']}; check the name, or log in "
                                  "to its registry (docker login)")
            if message.get("status") and not message.get("progressDetail"):
                layer = message.get("id")
                on_event(BuildEvent("log", f"{layer + ': ' if layer else ''}{message['status']}\n"))


@dataclass(frozen=True)
class BuildEvent:
    """One decoded message of a build stream."""

    kind: str  # "log" or "error"
    text: str


def build(api: docker.APIClient, archive: IO[bytes], *, dockerfile: str, build_args: Mapping[str, str],
          no_cache: bool, network: str | None, cache_from: tuple[str, ...] = (), tag: str | None = None,
          on_event: Callable[[BuildEvent], None]) -> str | None:
    """Send one single-stage build; return the image ID from the `aux` message, or None
    when the stream ended without one (the error events say why)."""
    image_id: str | None = None
    cache_from = ensure_cache_sources(api, cache_from, on_event)
    archive.seek(0)
    stream = api.build(
        fileobj=archive, custom_context=True, dockerfile=dockerfile,
        rm=True, forcerm=True, decode=True, nocache=no_cache, pull=False,
        buildargs=dict(build_args), network_mode=network, cache_from=list(cache_from) or None, tag=tag,
    )
    for message in stream:
        if not isinstance(message, dict):
            continue
        if "error" in message or "errorDetail" in message:
            detail = message.get("errorDetail") or {}
            text = message.get("error") or detail.get("message") or "build failed"
            on_event(BuildEvent("error", str(text)))
        aux = message.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        if isinstance(message.get("stream"), str):
            on_event(BuildEvent("log", message["stream"]))
        elif isinstance(message.get("status"), str):
            on_event(BuildEvent("log", message["status"] + "\n"))
    return image_id


_cache_lock = threading.Lock()
_cache_unavailable: dict[tuple[str, str], str] = {}  # (engine, ref) -> why it was left out


def ensure_cache_sources(api: docker.APIClient, refs: tuple[str, ...],
                         on_event: Callable[[BuildEvent], None]) -> tuple[str, ...]:
    """The `--cache-from` refs the classic builder can use. It reads only images the engine
    holds (BuildKit fetches a ref's inline cache from its registry itself), so those it lacks
    are pulled first, once per process; one that cannot be pulled is left out with one line,
    as BuildKit does, and the build goes on without it."""
    usable: list[str] = []
    with _cache_lock:  # stages built side by side need the same pulls: one at a time
        for ref in refs:
            key = (str(api.base_url), ref)
            if key in _cache_unavailable:
                continue
            if inspect(api, ref) is None:
                on_event(BuildEvent("log", f"pulling cache source {ref}\n"))
                try:
                    pull(api, ref, lambda event: None)
                except EngineError as exc:
                    _cache_unavailable[key] = str(exc)
                    on_event(BuildEvent("log", f"cache source {ref} not used: {exc}\n"))
                    continue
            usable.append(ref)
    return tuple(usable)


def tag(api: docker.APIClient, image_id: str, ref: str) -> None:
    repository, _, tag_ = _split_ref(ref)
    with engine_errors(f"tagging {ref}"):
        api.tag(image_id, repository, tag_ or "latest", force=True)


def _split_ref(ref: str) -> tuple[str, str, str]:
    """`host:5000/repo:tag` -> (`host:5000/repo`, ':', `tag`); digests are not tags."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ":", ref[colon + 1:]
    return ref, "", ""


def image_id_of(api: docker.APIClient, ref: str) -> str | None:
    found = inspect(api, ref)
    return None if found is None else str(found["Id"])


def inspect(api: docker.APIClient, ref: str) -> dict[str, Any] | None:
    """The engine's description of image `ref`, or None when there is no such image. A lost
    engine is one EngineError line, like every other call here."""
    with engine_errors(f"inspecting {ref}"):
        try:
            return dict(api.inspect_image(ref))
        except docker.errors.NotFound:
            return None


def onbuild_history(api: docker.APIClient, image_id: str) -> tuple[str, ...]:
    """ONBUILD triggers recorded in an image's history, oldest first."""
    with engine_errors(f"reading the history of {image_id[:19]}"):
        history = api.history(image_id)
    found = []
    for entry in reversed(history or []):
        created = str(entry.get("CreatedBy") or "")
        _, marker, trigger = created.partition("ONBUILD ")
        if marker and "#(nop)" in created[: created.find("ONBUILD")]:
            found.append(trigger.strip())
    return tuple(found)


def image_size(api: docker.APIClient, image_id: str) -> int:
    with engine_errors(f"inspecting {image_id[:19]}"):
        return int(api.inspect_image(image_id)["Size"])


def reap_leftovers(api: docker.APIClient, project: str | None = None) -> int:
    """Remove temporary containers left by killed runs (of `project`, or of any project);
    never those of a run that is still going on."""
    label = LABEL_TEMPORARY if project is None else f"{LABEL_PROJECT}={project}"
    removed = 0
    for container in containers_with_label(api, label):
        value = (container.get("Labels") or {}).get(LABEL_TEMPORARY)
        if value is not None and owner_gone(value, float(container.get("Created", 0))):
            remove_container(api, container["Id"])
            removed += 1
    return removed


@contextlib.contextmanager
def stopped_container(api: docker.APIClient, image_id: str, project: str) -> Iterator[str]:
    """A container created from `image_id` and never started (so nothing in the image runs);
    removed when the block ends, however it ends."""
    with engine_errors("creating a container to copy from"):
        created = api.create_container(
            image_id, command=NEVER_RUN, entrypoint=[], network_disabled=True,
            labels={LABEL_TEMPORARY: owner(), LABEL_PROJECT: project},
            name=f"compimg-tmp-{uuid.uuid4().hex[:12]}",
        )
    container = created["Id"]
    try:
        yield container
    finally:
        remove_container(api, container)


def remove_container(api: docker.APIClient, container: str) -> None:
    with engine_errors("removing a temporary container"), contextlib.suppress(docker.errors.NotFound):
        api.remove_container(container, force=True, v=True)


@contextlib.contextmanager
def archive_of(api: docker.APIClient, container: str, path: str) -> Iterator[Iterator[bytes]]:
    """The tar stream of `path` in the container, the way `docker cp` reads it.

    This is the SDK's `get_archive` with the response kept, so that leaving the block
    (done, refused, Ctrl-C) closes the connection: the engine holds the container while it
    streams, and would otherwise block its removal until the whole archive was read."""
    with engine_errors(f"copying {path}"):
        response = api._get(api._url("/containers/{0}/archive", container), params={"path": path},
                            stream=True, headers={"Accept-Encoding": "identity"})
    try:
        if response.status_code == 404:
            raise FileNotFoundError(path)
        with engine_errors(f"copying {path}"):
            api._raise_for_status(response)
        yield response.iter_content(DATA_CHUNK, decode_unicode=False)
    finally:
        response.close()


def open_tar_stream(chunks: Iterator[bytes]) -> tarfile.TarFile:
    return tarfile.open(fileobj=_ChunkReader(chunks), mode="r|")


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def tags_in_repository(api: docker.APIClient, repository: str) -> list[tuple[str, str]]:
    """(image ID, tag as the engine spells it) for every tag of `repository` (compared in
    normalised form: Podman answers `docker.io/compimg/...`)."""
    with engine_errors("listing images"):
        images = api.images(name=repository)
        if not images:  # engines that match `name` only against their own spelling
            images = [i for i in api.images() if any(normalise_ref(t).startswith(repository + ":")
                                                     for t in i.get("RepoTags") or [])]
    return [(image["Id"], tag) for image in images for tag in image.get("RepoTags") or []
            if normalise_ref(tag).startswith(repository + ":")]


def containers_with_label(api: docker.APIClient, label: str) -> list[dict[str, Any]]:
    with engine_errors("listing containers"):
        return list(api.containers(all=True, filters={"label": label}))


def remove_unnamed(api: docker.APIClient, image_id: str) -> None:
    """Remove an image nothing names; one still in use (a container, a child image) stays."""
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        api.remove_image(image_id, force=False, noprune=False)


def untag(api: docker.APIClient, ref: str) -> None:
    """Remove one name; the image goes too once no name or child image holds it."""
    with engine_errors(f"removing {ref}"), contextlib.suppress(docker.errors.NotFound):
        api.remove_image(ref, force=False, noprune=False)


_PUSHED_DIGEST = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")


def push(api: docker.APIClient, ref: str, on_event: Callable[[BuildEvent], None]) -> str:
    """Push `ref`; return the digest the registry gave it (`sha256:...`)."""
    repository, _, tag_ = _split_ref(ref)
    digest = ""
    with engine_errors(f"pushing {ref}"):
        for message in api.push(repository, tag=tag_ or "latest", stream=True, decode=True):
            if "error" in message:
                raise EngineError(f"pushing {ref}: {message['error']}")
            aux = message.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status = message.get("status")
            found = _PUSHED_DIGEST.search(str(status or ""))
            if found and not digest:  # Podman says it only in words: `v1: digest: sha256:... size: N`
                digest = found.group(1)
            if status:
                layer = message.get("id")
                progress = message.get("progress") or ""
                on_event(BuildEvent("log", f"{layer + ': ' if layer else ''}{status} {progress}".rstrip() + "\n"))
    return digest
