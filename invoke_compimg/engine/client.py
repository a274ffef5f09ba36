"""One Docker engine: its clients, what it is, what we learnt about it, and the one seam where
the SDK's and the transport's errors become our one-line `EngineError`s.

Every module that talks to the engine takes an `Engine`. Uses of the Docker SDK's private
methods (`_post`, `_get`, `_url`, `_raise_for_status`, `_stream_helper`, raw sockets) live
here only, behind `post_stream`, `get_stream`, `json_stream` and `upgrade`. Errors are mapped in
`errors()`, as httpx's `map_httpcore_exceptions` maps its transport's: the SDK's API errors
keep the engine's own words, a lost connection says so and what to check.

The SDK (with requests and urllib3: 0.1 s to import) is imported only when a call needs it:
on a unix socket, the questions an unchanged build asks (`kind`, `get_json`) go through
`unix_http` instead.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..ahead import Ahead
from ..errors import EngineError, UpgradeRefused
from ..records import record
from ..words import yes_or_no
from .unix_http import Answer, UnixJSON

if TYPE_CHECKING:
    import docker
    import requests

    from .control.client import Control

SSH_CLIENT_VARIABLE = "COMPIMG_SSH_CLIENT"
MINIMUM_API_VERSION = "1.24"  # the SDK's own minimum; replaced by the engine's at once
DEFAULT_ADDRESS = "unix:///var/run/docker.sock"


@record
class EngineKind:
    """What answers at the address, from its `/version` (asked once per Engine)."""

    podman: bool  # Podman's Docker-compatible service (`Podman Engine` component)
    os: str  # linux, windows
    version: str
    api_version: str = ""
    arch: str = "amd64"  # Go's name for the engine's CPU: amd64, arm64, ...

    @property
    def buildkit(self) -> bool:
        """Does `/build?version=2` run BuildKit? Docker on Linux does; Podman answers it
        with its own classic builder, and Windows engines have none."""
        return not self.podman and self.os == "linux"

    @property
    def grpc(self) -> bool:
        """Does it serve BuildKit's own gRPC API (`POST /grpc`: Control, with sessions)?
        Docker with BuildKit does from API 1.39 (18.09) on."""
        return self.buildkit and _version_tuple(self.api_version) >= (1, 39)

    @property
    def name(self) -> str:
        return f"Podman {self.version}" if self.podman else f"Docker {self.version} ({self.os})"

    @staticmethod
    def of(found: Mapping[str, Any]) -> EngineKind:
        components = {c.get("Name", ""): c for c in found.get("Components") or []}
        podman = "Podman Engine" in components
        version = str((components.get("Podman Engine") or {}).get("Version") or found.get("Version") or "?")
        return EngineKind(podman, str(found.get("Os") or "linux").lower(), version, str(found.get("ApiVersion") or ""),
                          str(found.get("Arch") or "amd64").lower())

    @property
    def platform(self) -> str:
        """The platform its builds run on (`linux/amd64`): BuildKit's BUILDPLATFORM."""
        return f"{self.os}/{self.arch}"


class _EarlyVersion:
    """An engine's `/version`, asked on a thread of its own before anything needs it."""

    FRESH_SECONDS = 30.0  # older than this (a long-lived process), it is asked again

    def __init__(self, path: str) -> None:
        self.started = time.monotonic()
        self._asked = Ahead(lambda: UnixJSON(path).get("/version"), "compimg-engine-version")

    def result(self) -> Any:
        """The answer (None: none to use); raises what asking raised (an engine that is not
        there, or hung for the request's whole timeout, is not asked a second time)."""
        if time.monotonic() - self.started > self.FRESH_SECONDS:
            return None
        answer = self._asked.result()
        return answer if isinstance(answer, dict) else None


_early_versions: dict[str, _EarlyVersion] = {}
_early_lock = threading.Lock()


def ask_early(environment: Mapping[str, str] | None = None) -> None:
    """Start asking the engine that `environment` (by default this process's) names for its
    `/version`, for the next `Engine` of that address to use. Only on a unix socket. The
    engine takes 6-11 ms to answer (it asks containerd and runc theirs), which then pass
    while a task reads its flags, config and Dockerfile instead of after."""
    env = os.environ if environment is None else environment
    address = env.get("DOCKER_HOST") or DEFAULT_ADDRESS
    if not address.startswith("unix://"):
        return
    path = address[len("unix://"):]
    with _early_lock:
        if path not in _early_versions:
            _early_versions[path] = _EarlyVersion(path)


def _early_version(path: str) -> Any:
    """The `/version` asked early for `path` (once), or None; raises what asking raised."""
    with _early_lock:
        early = _early_versions.pop(path, None)
    return early.result() if early is not None else None


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean the connection failed: ours always, the SDK's once it is loaded."""
    found: list[type[BaseException]] = [ConnectionError, http.client.HTTPException, FileNotFoundError,
                                        PermissionError]
    if "docker" in sys.modules:
        import requests.exceptions
        import urllib3.exceptions

        from .sdk import docker

        found += [requests.exceptions.RequestException, urllib3.exceptions.HTTPError, docker.errors.DockerException]
    return tuple(found)


def _ssh_errors() -> tuple[type[BaseException], ...]:
    """Paramiko's own exceptions, raised mid-request when an ssh:// connection drops (asked
    only for ssh:// engines: importing paramiko costs a command tens of milliseconds)."""
    try:
        import paramiko
    except ImportError:
        return ()
    return (paramiko.SSHException,)


class Engine:
    """The Docker engine named by DOCKER_HOST and the TLS variables (or by `environment`).

    Clients are made on first use, one per thread (a requests session is not shared across
    threads); the engine's `/version` is asked once, which gives the API version every client
    uses and the engine's kind."""

    def __init__(self, environment: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environment is None else environment)
        self.address = self._env.get("DOCKER_HOST") or DEFAULT_ADDRESS
        self._ssh_client = self._env.get(SSH_CLIENT_VARIABLE, "")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._kind: EngineKind | None = None
        self._clients: list[docker.APIClient] = []
        unix = self.address[len("unix://"):] if self.address.startswith("unix://") else None
        self._unix = UnixJSON(unix) if unix else None
        self.notes: dict[str, Any] = {}  # what calls learnt about this engine (see `remember`)
        self._key_locks: dict[str, threading.Lock] = {}
        self._closings = 0  # how many times close() ran: what was computed across one is not kept

    # --- clients ------------------------------------------------------------------------
    @property
    def api(self) -> docker.APIClient:
        client = getattr(self._local, "api", None)
        if client is None:
            client = self._connect()
            self._local.api = client
        return client

    @property
    def kind(self) -> EngineKind:
        if self._kind is None:
            if self._unix is not None:
                try:
                    found = _early_version(self._unix.path) or self._unix.get("/version")
                    self._kind = EngineKind.of(found or {})
                except (OSError, http.client.HTTPException, Answer, ValueError) as exc:
                    raise self._unreachable(exc, "") from exc
            else:
                self.api  # noqa: B018 - the first client learns the kind
        assert self._kind is not None
        return self._kind

    def get_json(self, path: str, *args: str, params: Mapping[str, str] | None = None) -> Any | None:
        """The engine's JSON answer to GET `path` of its versioned API; see `request`."""
        return self.request("GET", path, *args, params=params)

    def request(self, method: str, path: str, *args: str, params: Mapping[str, str] | None = None,
                none_for: Collection[int] = (404,)) -> Any | None:
        """The engine's JSON answer (None for an empty one) to `METHOD path` of its versioned
        API (`{0}`... filled with `args`, quoted as the SDK quotes them; `params` the query),
        or None when it answers a status of `none_for` (404: no such thing). Raises the SDK's
        APIError (or `unix_http.Answer`) for another error status: see `errors`. Without the SDK
        on a unix socket."""
        quoted = path.format(*(urllib.parse.quote(arg, safe="/:") for arg in args))
        if self._unix is not None:
            query = "?" + urllib.parse.urlencode(dict(params)) if params else ""
            return self._unix.request(method, f"/v{self.kind.api_version}{quoted}{query}", none_for=none_for)
        api = self.api
        send = {"GET": api._get, "POST": api._post, "DELETE": api._delete}[method]
        response = send(api._url(path, *args), params=dict(params or {}))
        if response.status_code in none_for:
            return None
        api._raise_for_status(response)
        return response.json() if response.content.strip() else None

    def remember(self, key: str, compute: Any) -> Any:
        """What `compute()` says about this engine, asked once per Engine (whether it has a
        `bridge` network, a cache source it could not pull, ...)."""
        with self._lock:
            if key in self.notes:
                return self.notes[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # two threads asking at once: one computes, the other waits for it
            with self._lock:
                if key in self.notes:
                    return self.notes[key]
                closings = self._closings
            value = compute()
            with self._lock:
                kept = closings == self._closings
                if kept:
                    self.notes[key] = value
            if not kept and callable(getattr(value, "close", None)):
                # close() ran meanwhile (a connection made early, on a thread of its own, for a
                # build that ended first): nobody would close it.
                value.close()
            return value

    def control(self) -> Control:
        """BuildKit's Control service on this engine (`POST /grpc`), connected on first use
        and closed with the Engine. gRPC is imported only here: only a build that is sent
        pays for it."""
        from .control.client import connect

        return self.remember("control", lambda: connect(engine=self))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close its connections; using the Engine again connects again."""
        with self._lock:
            self._closings += 1
            clients, self._clients = self._clients, []
            control = self.notes.pop("control", None)
            self._local = threading.local()
        if self._unix is not None:
            self._unix.close()
        if control is not None:
            control.close()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: BaseException, url: str) -> EngineError:
        if url.startswith("ssh://"):
            return EngineError(f"cannot reach the Docker engine at {self.address} through ssh ({reason(exc)}); "
                               f"check that `ssh {_ssh_target(url)} docker version` works")
        tls = _tls_failure(str(exc), self._cert_folder,
                           bool(self._env.get("DOCKER_TLS_VERIFY") or self._env.get("DOCKER_CERT_PATH")))
        if tls is not None:
            return EngineError(f"cannot reach the Docker engine at {self.address}: {tls}")
        why = reason(exc)
        advice = ("ask for access to its socket (e.g. join the `docker` group) or run as root"
                  if why == "permission denied" else "start Docker, or set DOCKER_HOST to the engine to use")
        return EngineError(f"cannot reach the Docker engine at {self.address} ({why}); {advice}")

    @property
    def _cert_folder(self) -> str:
        """Where the SDK (and the docker CLI) read the TLS files: DOCKER_CERT_PATH, else ~/.docker."""
        return self._env.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")

    def _connect(self) -> docker.APIClient:
        import requests.exceptions
        import urllib3.exceptions

        from .sdk import docker, load_paramiko

        try:
            params = dict(docker.utils.kwargs_from_env(environment=self._env))
        except docker.errors.TLSParameterError:  # the SDK's words name a parameter of its own
            folder = self._cert_folder
            missing = [name for name in ("ca.pem", "cert.pem", "key.pem")
                       if not os.path.isfile(os.path.join(folder, name))]
            raise EngineError(f"cannot use TLS to reach the Docker engine at {self.address}: {folder} lacks "
                              f"{', '.join(missing) or 'a readable ca.pem, cert.pem or key.pem'}; point "
                              "DOCKER_CERT_PATH at the folder that holds the engine's ca.pem and your cert.pem "
                              "and key.pem (or, for an engine without TLS, unset DOCKER_TLS_VERIFY and "
                              "DOCKER_CERT_PATH)") from None
        url = str(params.get("base_url") or "")
        ssh = url.startswith("ssh://")
        if ssh:
            params["use_ssh_client"] = self._use_ssh_client()
            if params["use_ssh_client"]:
                if not self.notes.get("ssh checked"):
                    _probe_ssh(url, self.address)  # ssh's own complaint, as our one line
                    self.notes["ssh checked"] = True
            else:
                load_paramiko()
        first = self._kind is None
        # Asked "auto", the SDK asks the engine's /version and throws the answer away: we ask
        # once ourselves and keep it.
        version = self._kind.api_version if self._kind and self._kind.api_version else MINIMUM_API_VERSION
        try:
            client = docker.APIClient(version=version, **params)
            _keep_the_engines_tls_verification(client)
            if first:
                found = client.version(api_version=False)
                client._version = str(found["ApiVersion"])
                self._kind = EngineKind.of(found)
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                urllib3.exceptions.HTTPError) as exc:
            raise self._unreachable(exc, url) from exc
        except Exception as exc:  # paramiko's own exceptions come out of the constructor unwrapped
            if not ssh:
                raise
            raise EngineError(_ssh_failure(url, self.address, exc)) from exc
        with self._lock:
            self._clients.append(client)
        return client

    def _use_ssh_client(self) -> bool:
        """Which ssh:// transport: the system `ssh` command (`ssh ... docker system dial-stdio`,
        with the user's whole OpenSSH setup: agent, ProxyJump) or paramiko (in process; reads
        ~/.ssh/config, known_hosts and the usual keys, refuses unknown hosts).
        COMPIMG_SSH_CLIENT=1 picks the command, 0 paramiko; unset, paramiko when installed."""
        from .sdk import has_paramiko

        chosen = self._ssh_client.strip().lower()
        wanted = yes_or_no(chosen)
        if wanted:
            return True
        if wanted is False:
            if not has_paramiko():
                raise EngineError(f"{SSH_CLIENT_VARIABLE}={chosen} asks for paramiko, which is not installed; "
                                  f"pip install paramiko, or set {SSH_CLIENT_VARIABLE}=1 to use the ssh command")
            return False
        if chosen:
            raise EngineError(f"{SSH_CLIENT_VARIABLE} {chosen!r}: write 1 (the ssh command) or 0 (paramiko)")
        return not has_paramiko()

    # --- the one seam for errors ----------------------------------------------------------
    @contextlib.contextmanager
    def errors(self, what: str, *, where: str | None = None, line: int | None = None) -> Iterator[None]:
        """SDK and transport errors raised inside the block, as one EngineError line
        (`where:line: what: reason`), keeping the original as the cause."""
        try:
            yield
        except EngineError:
            raise
        except Answer as exc:  # worded as the SDK's errors are (`_mapped`)
            missing = exc.status == 404 and "no such image" in exc.message.lower()
            said = f"no such image ({exc.message})" if missing else exc.message
            raise EngineError(f"{what}: {said}", where=where, line=line) from exc
        except Exception as exc:
            mapped = self._mapped(exc, what)
            if mapped is None:
                raise
            raise EngineError(mapped, where=where, line=line) from exc

    def _mapped(self, exc: Exception, what: str) -> str | None:
        """The line for an error of the SDK or the transport; None for any other error."""
        sdk = sys.modules.get("docker")
        if sdk is not None and isinstance(exc, sdk.errors.ImageNotFound):
            return f"{what}: no such image ({explanation(exc)})"
        if sdk is not None and isinstance(exc, sdk.errors.APIError):
            return f"{what}: {explanation(exc)}"
        ssh = _ssh_errors() if self.address.startswith("ssh://") else ()
        if isinstance(exc, (*_transport_errors(), *ssh)):
            return (f"{what}: lost the Docker engine at {self.address} ({reason(exc)}); "
                    "check that it is running, then retry")
        return None

    # --- raw requests: the SDK's private methods, here only --------------------------------
    def post_stream(self, path: str, *, params: Mapping[str, Any], data: Any = None,
                    headers: Mapping[str, str] | None = None) -> requests.Response:
        """POST with a streamed response and no read timeout (a silent `RUN` may send nothing
        for minutes; the SDK's build() does the same). An HTTP error status raises the SDK's
        APIError (see `errors`)."""
        api = self.api
        response = api._post(api._url(path), params=dict(params), data=data, stream=True, timeout=None,
                             headers=dict(headers or {}))
        try:
            api._raise_for_status(response)
        except BaseException:
            response.close()
            raise
        return response

    def get_stream(self, path: str, *args: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        """GET with a streamed response; the caller checks the status (a 404 may be an answer)."""
        api = self.api
        return api._get(api._url(path, *args), params=dict(params or {}), stream=True,
                        headers={"Accept-Encoding": "identity"})

    def raise_for_status(self, response: requests.Response) -> None:
        self.api._raise_for_status(response)

    def json_stream(self, response: requests.Response) -> Iterator[Any]:
        """The engine's stream of JSON messages, decoded."""
        return self.api._stream_helper(response, decode=True)

    def post(self, path: str, *, params: Mapping[str, Any]) -> None:
        api = self.api
        api._raise_for_status(api._post(api._url(path), params=dict(params)))

    @property
    def over_unix_socket(self) -> bool:
        """Is the engine reached through a unix socket (then requests go through `unix_http`)?"""
        return self._unix is not None

    def upgrade(self, path: str, headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> Upgraded:
        """POST `path` asking to switch protocols (`Upgrade: h2c` for BuildKit's gRPC API) and
        return the connection once the engine answered 101, taken as the SDK's own
        `attach_socket` takes it: over every transport the SDK has (unix, tcp, TLS, ssh).
        Bytes the engine sent right after the 101 (an HTTP/2 server's SETTINGS) may already sit
        in the HTTP client's buffer: `Upgraded.read` hands them on first. A header name given
        twice (pairs) needs a unix socket: the SDK's requests take one value per name."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if self._unix is not None:
            return self._upgrade_unix(path, pairs)
        if len({name.lower() for name, _ in pairs}) < len(pairs):
            raise ValueError(f"POST {path}: a header given twice can be sent to an engine on a unix socket only")
        api = self.api
        with self.errors(f"POST {path}"):
            response = api._post(api._url(path), headers={"Connection": "Upgrade", **dict(pairs)}, stream=True,
                                 timeout=None)
        if response.status_code != 101:
            text = " ".join(response.text.split())[:200]
            response.close()
            raise UpgradeRefused(path, response.status_code, text)
        sock = api._get_raw_response_socket(response)
        sock = getattr(sock, "_sock", sock)  # a unix socket comes as the SocketIO around it
        with contextlib.suppress(OSError, AttributeError):
            sock.settimeout(None)
        fp = response.raw._fp.fp  # http.client's reader: may hold bytes past the 101
        if hasattr(fp, "read1"):
            return Upgraded(response, fp.read1, sock)
        buffered = bytes(getattr(fp, "_rbuffer", b""))  # paramiko's ChannelFile
        if buffered:
            fp._rbuffer = b""

        def read(size: int) -> bytes:
            nonlocal buffered
            if buffered:
                data, buffered = buffered[:size], buffered[size:]
                return data
            return bytes(sock.recv(size))

        return Upgraded(response, read, sock)

    def _upgrade_unix(self, path: str, headers: Sequence[tuple[str, str]]) -> Upgraded:
        """`upgrade` on a unix socket, without the SDK (see `unix_http.UnixJSON.upgrade`)."""
        url = f"/v{self.kind.api_version}{path}"
        try:
            sock, response = self._unix.upgrade(url, headers)  # type: ignore[union-attr]
        except Answer as exc:
            raise UpgradeRefused(path, exc.status, exc.message) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, url) from exc
        return Upgraded(response, response.fp.read1, sock)


class Upgraded:
    """A connection the engine switched to another protocol: `read` (bytes already buffered
    first; b"" at the end), `sendall`, `shutdown_write`, `close`."""

    def __init__(self, response: requests.Response | http.client.HTTPResponse, reader: Callable[[int], bytes],
                 sock: Any) -> None:
        self.response = response  # kept alive: dropping it closes TLS sockets, and http.client's reader
        self.read = reader
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it (close does not)
        with contextlib.suppress(Exception):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.response.close()


def explanation(exc: Any) -> str:
    """The engine's own words in an SDK APIError."""
    text = exc.explanation if isinstance(exc.explanation, str) and exc.explanation else str(exc)
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Permission denied", "No such file or directory", "Connection refused",
                   "Name or service not known", "timed out", "Connection broken", "Connection aborted"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:200]


def _tls_failure(text: str, folder: str, tls: bool) -> str | None:
    """What a failed TLS handshake with the engine means, and what to check (None: not TLS).
    `tls`: TLS settings are given (an engine that refuses a client certificate may close the
    connection before its alert is read: then all we see is a reset or an early EOF)."""
    if "HTTP request to an HTTPS server" in text:
        return ("it speaks TLS only; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to the folder with its ca.pem "
                "and your cert.pem and key.pem")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed: ", 1)[-1].split(" (_ssl", 1)[0].strip(" )'\"")
        return (f"its certificate is not one that {folder}/ca.pem vouches for ({detail or 'verify failed'}); "
                "put the CA that signed the engine's certificate there")
    refused = ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "UNKNOWN_CA")
    closed = ("UNEXPECTED_EOF", "EOF occurred in violation of protocol", "Connection reset", "Connection aborted")
    if any(marker in text for marker in refused) or (tls and any(marker in text for marker in closed)):
        return (f"it refused our client certificate {folder}/cert.pem (or closed the connection during the TLS "
                "handshake); the engine (--tlsverify) takes only certificates signed by its --tlscacert")
    if "SSLError" in text or "WRONG_VERSION_NUMBER" in text:
        detail = text.split("SSLError(", 1)[-1].split(" (_ssl", 1)[0].strip(" ()'\"")
        return f"the TLS handshake failed ({detail}); check DOCKER_HOST's port and DOCKER_TLS_VERIFY"
    return None


def _keep_the_engines_tls_verification(client: Any) -> None:
    """requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (set for a company's proxy, say)
    replace the CA a session verifies with, and turn verification back on where DOCKER_CERT_PATH
    without DOCKER_TLS_VERIFY asked for none (docker-py#2433): the engine at DOCKER_HOST was
    then "certificate verify failed" while the docker CLI reached it. Its own setting
    (DOCKER_CERT_PATH/ca.pem, or no verification) stands, as for the docker CLI."""
    own = client.verify
    if own is True:  # no TLS settings of the engine's: requests' own rules
        return
    merge = client.merge_environment_settings

    def merged(url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        settings = merge(url, proxies, stream, verify, cert)
        if verify is None:  # the request did not choose: the engine's setting, not the environment's
            settings["verify"] = own
        return dict(settings)

    client.merge_environment_settings = merged


def _ssh_target(url: str) -> str:
    """`ssh://user@host:port` -> `-p port user@host`, as one would type it."""
    rest = url[len("ssh://"):].split("/", 1)[0]
    host, _, port = rest.rpartition(":") if rest.rfind(":") > rest.rfind("]") else (rest, "", "")
    return f"-p {port} {host}" if port else host


def _ssh_failure(url: str, address: str, exc: BaseException) -> str:
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
        what, check = reason(exc), "check the host name and port"
    else:
        what, check = name, "check that `ssh` to it works"
    return (f"cannot reach the Docker engine at {address} through ssh ({what}: {text}); {check} "
            f"(`ssh {_ssh_target(url)} docker version`)")


def _probe_ssh(url: str, address: str) -> None:
    """Run the SDK's own command once (`ssh ... docker system dial-stdio`, input closed so it
    ends at once), keeping ssh's message for our one line: the SDK lets it reach stderr."""
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
        raise EngineError(f"cannot reach the Docker engine at {address} through ssh ({reason(exc)}); "
                          "check that the `ssh` command is installed and the host answers") from exc
    if done.returncode == 255:  # ssh's own failure, not the remote command's
        said = " ".join((done.stderr.strip().splitlines() or ["ssh failed"])[-1].split())
        raise EngineError(f"cannot reach the Docker engine at {address} through ssh ({said}); "
                          f"check that `ssh {_ssh_target(url)} docker version` works")
    if done.returncode != 0:
        said = " ".join((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1].split())
        raise EngineError(f"cannot reach the Docker engine at {address}: `docker system dial-stdio` failed "
                          f"on the ssh host ({said}); check that Docker's CLI is installed there and its "
                          "engine runs")
