"""A BuildKit session: the gRPC server on our side that a build calls back.

How it is reached (moby/buildkit session/session.go, grpchijack, manager.go at v0.8): we
call `Control.Session`, a bidirectional stream of BytesMessages, with the gRPC metadata
`x-docker-expose-session-uuid` (our id, which a SolveRequest names in `Session`),
`x-docker-expose-session-name`, `x-docker-expose-session-sharedkey` (BuildKit keeps the
context it received under it: the same key for the same folder means only changes travel)
and one `x-docker-expose-session-grpc-method` per method we serve (full paths; the daemon
compares them lower-cased). The stream's bytes are an HTTP/2 connection on which the daemon
is the client: `h2_server` serves it from those bytes (no socket). A Docker engine also
takes the same session on a connection of its own, `POST /session` upgraded to h2c with the
same names as HTTP headers (`EngineAttached`): one HTTP/2 layer instead of two. The daemon checks
`grpc.health.v1.Health/Check` about once a second and drops the session on a failure; we
answer SERVING (field 1 = 1, encoded by hand).

What is served is narrow, see `fswalk`, `diffcopy_send`, `diffcopy_receive`, `providers`.
Several solves may use one session at the same time; only an export (FileSend) needs the
session to itself, since v0.8's FileSend request does not say which solve it is for.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import field
from typing import Any

import h2.exceptions

from ...records import record
from ..protowire import ProtocolError, fields, message_field
from .diffcopy_send import Refused, Sender
from .fswalk import BadPattern, Dir, Entry, Request, walk, walking
from .grpc_frames import OK
from .h2_client import ByteStream, Connection, RpcError
from .h2_client import Call as ClientCall
from .h2_server import FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, Call, Method, Server
from .messages import SESSION
from .providers import Agents, NotFound, Registries, Secret, Secrets

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
SSH_ID_KEY = "buildkit.ssh.id"


# The services' paths (`/package.Service/Method`, from our .proto files: tests check them).
PATHS = {
    "filesync": "/moby.filesync.v1.FileSync/DiffCopy",
    "filesend": "/moby.filesync.v1.FileSend/DiffCopy",
    "secret": "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "ssh_check": "/moby.sshforward.v1.SSH/CheckAgent",
    "ssh_forward": "/moby.sshforward.v1.SSH/ForwardAgent",
    "credentials": "/moby.filesync.v1.Auth/Credentials",
    "session": SESSION,  # (Control's paths are written once, with the messages a solve sends)
}


def _proto(module: str) -> Any:
    """A generated module, imported when a build first uses its service: protobuf's runtime
    costs 15-20 ms to import, and a build asks for secrets, ssh or credentials only when it uses
    them (FileSync, which every build uses, is encoded by hand: `fsutil_wire`)."""
    return importlib.import_module(f"{__package__}.proto.{module}")


def _codec(module: str, request: str) -> dict[str, Callable[..., Any]]:
    """A Method's decode and encode through `module`'s messages."""
    return {"decode": lambda data: getattr(_proto(module), request).FromString(data),
            "encode": lambda message: message.SerializeToString()}


@record
class LocalExport:
    """A `local` export: the result's files merged into the folder `dest`."""

    dest: str


@record
class TarExport:
    """A `tar` export: the result as one tar file at `path`."""

    path: str


Export = LocalExport | TarExport


@record(frozen=False)
class Transfer:
    """What one FileSync.DiffCopy sent: for tests and for progress."""

    dir: str
    entries: int = 0
    files: int = 0
    bytes: int = 0


@record(frozen=False)
class Session:
    """What one or more builds may ask of this machine. `shared_key` must stay the same for
    the same context folder (BuildKit keeps what it received under it); `ssh` maps agent
    ids to sockets (only those the user named: none by default); `registries` answers
    credential requests (None: none are answered)."""

    name: str = "compimg"
    shared_key: str = ""
    dirs: Sequence[Dir] = ()
    secrets: Sequence[Secret] = ()
    ssh: Mapping[str, str] = field(default_factory=dict)
    registries: Registries | None = field(default_factory=Registries)
    id: str = field(default_factory=lambda: os.urandom(16).hex())  # uuid4's length, without uuid's import
    # The FileSync requests the daemon is expected to make, by dir name: listed ahead, on a
    # thread of ours, from its first FileSync call on (see `_Ahead`).
    expected: Mapping[str, Request] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)  # every FileSync.DiffCopy served
    health_checks: int = 0  # answered so far

    def __post_init__(self) -> None:
        self._dirs = {d.name: d for d in self.dirs}
        self._secrets = Secrets(self.secrets)
        self._agents = Agents(self.ssh)
        self._export: Export | None = None
        self._export_lock = threading.Lock()
        self._ahead: dict[str, _Ahead] | None = None  # started on the first FileSync call
        self._ahead_lock = threading.Lock()
        self.listed_ahead = 0  # FileSync calls answered from a listing made ahead (for tests)

    # --- what the daemon is told ---------------------------------------------------------

    def methods(self) -> list[str]:
        served = [PATHS["filesync"], PATHS["filesend"], PATHS["secret"], PATHS["ssh_check"], PATHS["ssh_forward"],
                  HEALTH_CHECK]
        if self.registries is not None:
            served.append(PATHS["credentials"])
        return served

    def metadata(self) -> list[tuple[str, str]]:
        meta = [("x-docker-expose-session-uuid", self.id), ("x-docker-expose-session-name", self.name),
                ("x-docker-expose-session-sharedkey", self.shared_key)]
        meta += [("x-docker-expose-session-grpc-method", m) for m in self.methods()]
        return meta

    # --- exports -------------------------------------------------------------------------

    @contextlib.contextmanager
    def exporting(self, export: Export | None) -> Iterator[None]:
        """Route FileSend to `export` while a solve runs (nothing if None)."""
        if export is None:
            yield
            return
        with self._export_lock:
            if self._export is not None:
                raise ValueError("a session takes one local or tar export at a time; "
                                 "give the other solve a session of its own (with the same shared key)")
            self._export = export
        try:
            yield
        finally:
            with self._export_lock:
                self._export = None

    # --- the handlers --------------------------------------------------------------------

    def handler(self) -> Callable[[str], Method | None]:
        """The methods served, by path (what `h2_server.Server` looks up)."""
        methods = {
            PATHS["filesync"]: Method(self._filesync, streaming=True),  # fsutil Packets, by hand (fsutil_wire)
            PATHS["filesend"]: Method(self._filesend, streaming=True),  # raw bytes
            PATHS["secret"]: Method(self._secret, streaming=False, **_codec("secrets_pb2", "GetSecretRequest")),
            PATHS["ssh_check"]: Method(self._ssh_check, streaming=False,
                                       **_codec("sshforward_pb2", "CheckAgentRequest")),
            PATHS["ssh_forward"]: Method(self._ssh_forward, streaming=True),  # BytesMessages, by hand (_wrap)
            HEALTH_CHECK: Method(self._health, streaming=False),
        }
        if self.registries is not None:
            methods[PATHS["credentials"]] = Method(self._credentials, streaming=False,
                                                   **_codec("auth_pb2", "CredentialsRequest"))
        return methods.get

    def _health(self, request: bytes, context: Call) -> bytes:
        self.health_checks += 1
        return HEALTH_SERVING

    def _filesync(self, incoming: Iterable[bytes], context: Call) -> Iterator[bytes]:
        meta = _metadata(context)
        name = (meta.get("dir-name") or [""])[0]
        directory = self._dirs.get(name)  # fixed when the session is made: no lock
        if directory is None:
            context.abort(NOT_FOUND, f"no access allowed to dir {name!r}")
        assert directory is not None
        request = Request(include=meta.get("include-patterns"), exclude=meta.get("exclude-patterns"),
                          follow=meta.get("followpaths"))
        entries = self._listed_ahead(name, request)
        if entries is None:
            try:
                entries = walk(directory, request)
            except (BadPattern, OSError) as exc:
                context.abort(INVALID_ARGUMENT, f"dir {name!r}: {exc}")
        assert entries is not None  # (abort raised otherwise)
        root = os.path.realpath(directory.root) if directory.root is not None else None
        sender = Sender(entries, root)
        transfer = Transfer(name, len(entries))
        self.transfers.append(transfer)
        try:
            yield from sender.run(incoming)
        except Refused as exc:
            context.abort(PERMISSION_DENIED, str(exc))
        except OSError as exc:
            context.abort(PERMISSION_DENIED, f"dir {name!r}: {exc.strerror or exc}")
        finally:
            transfer.files, transfer.bytes = sender.files_sent, sender.sent_bytes

    def _listed_ahead(self, name: str, request: Request) -> list[Entry] | None:
        """Dir `name`'s entries for `request` if they were listed ahead (None: list them now).
        The daemon's first FileSync call starts the listings of `expected`: the Dockerfile
        frontend reads the Dockerfile and `.dockerignore` first, and makes its plan before it
        asks for the context (30-40 ms on BuildKit 0.8, as long as a 2,000-file listing)."""
        with self._ahead_lock:
            if self._ahead is None:
                self._ahead = {n: _Ahead(self._dirs[n], r) for n, r in self.expected.items() if n in self._dirs}
            ahead = self._ahead.get(name)
            if ahead is None:
                return None
            if not ahead.answers(request):
                if not _ignore_file_probe(request):  # the real request differs: no use any more
                    del self._ahead[name]
                    ahead.stop()
                return None
            del self._ahead[name]  # once: a later call is listed again, as it is then
        entries = ahead.entries()
        if entries is not None:
            self.listed_ahead += 1
        return entries

    def stop_listing_ahead(self) -> None:
        """The session's solves are over: a listing still going on stops."""
        with self._ahead_lock:
            aheads, self._ahead = self._ahead or {}, {}
        for ahead in aheads.values():
            ahead.stop()

    def _filesend(self, incoming: Iterable[bytes], context: Call) -> Iterator[bytes]:
        from .diffcopy_receive import ExportRefused, TarFile, receive_into  # (only builds with outputs need it)

        export = self._export
        if export is None:
            context.abort(FAILED_PRECONDITION, "no export was asked of this session")
        try:
            if isinstance(export, TarExport):
                TarFile(export.path).receive(_unwrap(incoming))
                return
            assert isinstance(export, LocalExport)
            # a local export's messages are fsutil Packets themselves, a tar export's BytesMessages
            yield from receive_into(incoming, export.dest, "the export")
        except ExportRefused as exc:
            context.abort(PERMISSION_DENIED, str(exc))

    def _secret(self, request: Any, context: Call) -> Any:
        try:
            return _proto("secrets_pb2").GetSecretResponse(data=self._secrets.get(request.ID))
        except NotFound:
            context.abort(NOT_FOUND, f"secret {request.ID} not found")

    def _ssh_check(self, request: Any, context: Call) -> Any:
        try:
            self._agents.check(request.ID)
        except NotFound as exc:
            context.abort(NOT_FOUND, str(exc))
        return _proto("sshforward_pb2").CheckAgentResponse()

    def _ssh_forward(self, incoming: Iterable[bytes], context: Call) -> Iterator[bytes]:
        agent_id = (_metadata(context).get(SSH_ID_KEY) or ["default"])[0]
        try:
            for answer in self._agents.forward(agent_id, _unwrap(incoming)):
                yield _wrap(answer)
        except NotFound as exc:
            context.abort(NOT_FOUND, str(exc))

    def _credentials(self, request: Any, context: Call) -> Any:
        assert self.registries is not None
        found = self.registries.credentials(request.Host)
        return _proto("auth_pb2").CredentialsResponse(Username=found.username, Secret=found.secret)


class _Ahead:
    """A dir listed, on a thread of its own, before the daemon asks for it (see
    `Session.expected`). Its entries answer only the same request; they are as old as the
    listing, tens of milliseconds, as a listing's stats always are by the time the daemon asks
    for a file's data (each file is opened and read only then, as before)."""

    def __init__(self, directory: Dir, request: Request) -> None:
        self.request = request
        self._found: list[Entry] = []
        self._complete = False  # set only when the walk ended by itself: a partial listing is never used
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._list, args=(directory,), name="compimg-list-ahead", daemon=True)
        self._thread.start()

    def _list(self, directory: Dir) -> None:
        try:
            for entry in walking(directory, self.request):
                if self._stopped.is_set():
                    return
                self._found.append(entry)
            self._complete = True
        except BaseException:  # listed again when asked, which then says why (or fails as it would)
            self._complete = False

    def answers(self, request: Request) -> bool:
        """Would `request` list the same? (The walk sorts the followpaths and drops repeats.)"""
        def listed(patterns: Sequence[str] | None) -> list[str] | None:
            return None if patterns is None else list(patterns)

        mine = self.request
        return (listed(mine.include) == listed(request.include) and listed(mine.exclude) == listed(request.exclude)
                and set(mine.follow or ()) == set(request.follow or ()))

    def entries(self) -> list[Entry] | None:
        self._thread.join()
        return self._found if self._complete and not self._stopped.is_set() else None

    def stop(self) -> None:
        self._stopped.set()


def _ignore_file_probe(request: Request) -> bool:
    """The Dockerfile frontend's read of `.dockerignore` (or `NAME.dockerignore`) from the
    context dir, which comes before its request for the context itself."""
    return bool(request.follow) and all(p.endswith(".dockerignore") for p in request.follow or ())


def _metadata(context: Call) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str):
            found.setdefault(key.lower(), []).append(value)
    return found


def _wrap(data: bytes) -> bytes:
    """A BytesMessage holding `data` (field 1, length-delimited; empty data is not written):
    Control.Session's, a tar export's and ssh forwarding's, one message on the wire."""
    return message_field(1, data) if data else b""


def _unwrap_one(message: bytes) -> bytes:
    """The data of a BytesMessage (ProtocolError if it is not one)."""
    data = b""
    for number, value in fields(message):
        if number == 1:
            if not isinstance(value, bytes):
                raise ProtocolError("a BytesMessage whose data is not length-delimited")
            data = value
    return data


def _unwrap(messages: Iterable[bytes]) -> Iterator[bytes]:
    for message in messages:
        yield _unwrap_one(message)


# --- attaching: Control.Session <-> h2_server -----------------------------------------------


class _Served:
    """What both ways of serving a session share: the `h2_server.Server`, whose bytes wait in
    `outgoing` for a sender thread of ours (the server hands them on under its lock, which
    must never wait on a daemon that stopped reading), joined into writes of up to `JOIN`."""

    JOIN = 1 << 20  # the most bytes joined into one write (a BytesMessage: the daemon takes 4 MiB)

    def __init__(self, session: Session) -> None:
        self.session = session
        self.closed = threading.Event()
        self.outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.server = Server(session.handler(), self.outgoing.put, name="compimg-session")
        self.threads: list[threading.Thread] = []

    def _start(self, *targets: tuple[Callable[[], None], str]) -> None:
        """Start a daemon thread per (target, name); on any failure close what was started."""
        try:
            for target, name in targets:
                self.threads.append(threading.Thread(target=target, name=name, daemon=True))
                self.threads[-1].start()
        except BaseException:
            self.close()
            raise

    def _to_daemon(self) -> Iterator[bytes]:
        while True:
            data = self.outgoing.get()
            if data is None or self.closed.is_set():
                return
            chunks, size = [data], len(data)
            while size < self.JOIN:  # what gathered while the last one was sent goes as one
                try:
                    more = self.outgoing.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.outgoing.put(None)
                    break
                chunks.append(more)
                size += len(more)
            joined = b"".join(chunks)
            for start in range(0, len(joined), self.JOIN):
                yield joined[start:start + self.JOIN]

    def close(self) -> None:
        """Stop serving: `_cut` ends the way the daemon's bytes came (first: a daemon that
        stopped reading must not hold up the rest), then the server (it waits for the handlers:
        an export removes its staging folder) and our threads."""
        self.closed.set()
        self.session.stop_listing_ahead()
        self._cut()
        self.server.close()
        self.outgoing.put(None)
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(5)

    def _cut(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Attached(_Served):
    """A session served to the daemon through one Control.Session call: the call's incoming
    BytesMessages feed the server, whose bytes go back as BytesMessages. `close()` ends the
    call, the server and the sender."""

    def __init__(self, session: Session, connection: Connection) -> None:
        super().__init__(session)
        try:
            # The daemon's bytes go into the server on the connection's reader thread (it never
            # blocks there: each call's handler has a thread of its own), one hop fewer than a
            # thread of ours between them.
            self.call = connection.call(PATHS["session"], metadata=session.metadata(),
                                        on_message=lambda message: self.server.receive(_unwrap_one(message)))
            self.call.add_done_callback(self._ended)
        except BaseException:
            self.close()
            raise
        self._start((self._send, "compimg-session-send"))

    def _send(self) -> None:
        try:
            for data in self._to_daemon():
                self.call.send(_wrap(data))
            self.call.done_sending()
        except RpcError:
            pass  # the call is over: `_ended` saw why
        finally:
            self.server.close()

    def _ended(self, call: ClientCall) -> None:
        """The daemon ended the session (or the connection was lost): the sender stops, and
        with it the server (not here: this is the connection's reader thread)."""
        if call.code != OK and not self.closed.is_set():
            log.debug("session %s ended: %s", self.session.id, call.details)
        self.outgoing.put(None)

    def _cut(self) -> None:
        call = getattr(self, "call", None)  # (none if the call could not be made)
        if call is not None:
            call.cancel()


class EngineAttached(_Served):
    """A session served on a Docker engine's own `POST /session` connection (upgraded to h2c;
    the engine is the HTTP/2 client): the connection's bytes feed an `h2_server.Server`
    directly, where `Attached` carries them as BytesMessages inside a gRPC stream of the /grpc
    connection, through a second HTTP/2 layer. A 200 MB local export: 1.9-2.0 s through
    Control.Session, 1.5 s here (docker build: 1.1-1.2 s). `close()` ends the connection
    first (a daemon that stopped reading must not hold up the rest), the server and both
    threads."""

    READ = 1 << 20

    def __init__(self, session: Session, connection: ByteStream) -> None:
        super().__init__(session)
        self.connection = connection
        self._start((self._send, "compimg-session-send"), (self._read, "compimg-session-read"))

    def _send(self) -> None:
        try:
            for data in self._to_daemon():
                self.connection.sendall(data)
        except OSError:  # the engine went away: the reader sees the end too
            pass
        finally:
            self._cut()

    def _read(self) -> None:
        try:
            while data := self.connection.read(self.READ):
                self.server.receive(data)
        except (OSError, ValueError, h2.exceptions.ProtocolError) as exc:  # lost, or not HTTP/2
            if not self.closed.is_set():
                log.debug("session %s ended: %s", self.session.id, exc)
        finally:
            self._cut()
            self.server.close()
            self.outgoing.put(None)

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.close()  # (wakes the other thread, blocked reading or writing it)
