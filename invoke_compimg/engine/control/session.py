"""A BuildKit session: the gRPC server on our side that a build calls back.

How it is reached (moby/buildkit session/session.go, grpchijack, manager.go at v0.8): we
call `Control.Session`, a bidirectional stream of BytesMessages, with the gRPC metadata
`x-docker-expose-session-uuid` (our id, which a SolveRequest names in `Session`),
`x-docker-expose-session-name`, `x-docker-expose-session-sharedkey` (BuildKit keeps the
context it received under it: the same key for the same folder means only changes travel)
and one `x-docker-expose-session-grpc-method` per method we serve (full paths; the daemon
compares them lower-cased). The stream's bytes are an HTTP/2 connection on which the daemon
is the client: we pipe them into a `grpc.server` of ours listening on a unix socket in a
private folder (0700). The daemon checks `grpc.health.v1.Health/Check` about once a second
and drops the session on a failure; we answer SERVING (field 1 = 1, encoded by hand so that
no second `grpc.health.v1` descriptor can clash with grpcio-health-checking).

What is served is narrow, see `fswalk`, `diffcopy_send`, `diffcopy_receive`, `providers`.
Several solves may use one session at the same time; only an export (FileSend) needs the
session to itself, since v0.8's FileSend request does not say which solve it is for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from ...errors import EngineError
from ...procs import socket_folder
from .diffcopy_receive import ExportRefused, TarFile, receive_into
from .diffcopy_send import Refused, Sender
from .fswalk import BadPattern, Dir, Request, walk
from .proto import auth_pb2, control_pb2, filesync_pb2, fsutil_pb2, secrets_pb2, sshforward_pb2
from .providers import Agents, NotFound, Registries, Secret, Secrets

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
SSH_ID_KEY = "buildkit.ssh.id"


def method_path(service: Any, method: str) -> str:
    """`/package.Service/Method` from a generated service descriptor."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


def _service(module: Any, name: str) -> Any:
    return module.DESCRIPTOR.services_by_name[name]


def _paths() -> dict[str, str]:
    return {
        "filesync": method_path(_service(filesync_pb2, "FileSync"), "DiffCopy"),
        "filesend": method_path(_service(filesync_pb2, "FileSend"), "DiffCopy"),
        "secret": method_path(_service(secrets_pb2, "Secrets"), "GetSecret"),
        "ssh_check": method_path(_service(sshforward_pb2, "SSH"), "CheckAgent"),
        "ssh_forward": method_path(_service(sshforward_pb2, "SSH"), "ForwardAgent"),
        "credentials": method_path(_service(auth_pb2, "Auth"), "Credentials"),
        "session": method_path(_service(control_pb2, "Control"), "Session"),
    }


PATHS = _paths()


@dataclass(frozen=True)
class LocalExport:
    """A `local` export: the result's files merged into the folder `dest`."""

    dest: str


@dataclass(frozen=True)
class TarExport:
    """A `tar` export: the result as one tar file at `path`."""

    path: str


Export = LocalExport | TarExport


@dataclass
class Transfer:
    """What one FileSync.DiffCopy sent: for tests and for progress."""

    dir: str
    entries: int = 0
    files: int = 0
    bytes: int = 0


@dataclass
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
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    transfers: list[Transfer] = field(default_factory=list)  # every FileSync.DiffCopy served
    health_checks: int = 0  # answered so far

    def __post_init__(self) -> None:
        self._dirs = {d.name: d for d in self.dirs}
        self._secrets = Secrets(self.secrets)
        self._agents = Agents(self.ssh)
        self._export: Export | None = None
        self._export_lock = threading.Lock()

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

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            PATHS["filesync"]: grpc.stream_stream_rpc_method_handler(
                self._filesync, request_deserializer=fsutil_pb2.Packet.FromString,
                response_serializer=fsutil_pb2.Packet.SerializeToString),
            PATHS["filesend"]: grpc.stream_stream_rpc_method_handler(self._filesend),  # raw bytes
            PATHS["secret"]: grpc.unary_unary_rpc_method_handler(
                self._secret, request_deserializer=secrets_pb2.GetSecretRequest.FromString,
                response_serializer=secrets_pb2.GetSecretResponse.SerializeToString),
            PATHS["ssh_check"]: grpc.unary_unary_rpc_method_handler(
                self._ssh_check, request_deserializer=sshforward_pb2.CheckAgentRequest.FromString,
                response_serializer=sshforward_pb2.CheckAgentResponse.SerializeToString),
            PATHS["ssh_forward"]: grpc.stream_stream_rpc_method_handler(
                self._ssh_forward, request_deserializer=sshforward_pb2.BytesMessage.FromString,
                response_serializer=sshforward_pb2.BytesMessage.SerializeToString),
            HEALTH_CHECK: grpc.unary_unary_rpc_method_handler(self._health),
        }
        if self.registries is not None:
            methods[PATHS["credentials"]] = grpc.unary_unary_rpc_method_handler(
                self._credentials, request_deserializer=auth_pb2.CredentialsRequest.FromString,
                response_serializer=auth_pb2.CredentialsResponse.SerializeToString)
        return _Handler(methods)

    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.health_checks += 1
        return HEALTH_SERVING

    def _filesync(self, incoming: Iterable[fsutil_pb2.Packet], context: grpc.ServicerContext) -> Iterator[Any]:
        meta = _metadata(context)
        name = (meta.get("dir-name") or [""])[0]
        directory = self._dirs.get(name)  # fixed when the session is made: no lock
        if directory is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no access allowed to dir {name!r}")
        assert directory is not None
        request = Request(include=meta.get("include-patterns"), exclude=meta.get("exclude-patterns"),
                          follow=meta.get("followpaths"))
        try:
            entries = walk(directory, request)
        except (BadPattern, OSError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"dir {name!r}: {exc}")
        root = os.path.realpath(directory.root) if directory.root is not None else None
        sender = Sender(entries, root)
        transfer = Transfer(name, len(entries))
        self.transfers.append(transfer)
        try:
            yield from sender.run(incoming)
        except Refused as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"dir {name!r}: {exc.strerror or exc}")
        finally:
            transfer.files, transfer.bytes = sender.files_sent, sender.sent_bytes

    def _filesend(self, incoming: Iterable[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        export = self._export
        if export is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no export was asked of this session")
        try:
            if isinstance(export, TarExport):
                TarFile(export.path).receive(_unwrap(incoming))
                return
            assert isinstance(export, LocalExport)
            # a local export's messages are fsutil Packets themselves, a tar export's BytesMessages
            packets = (fsutil_pb2.Packet.FromString(m) for m in incoming)
            for packet in receive_into(packets, export.dest, "the export"):
                yield packet.SerializeToString()
        except ExportRefused as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def _secret(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return secrets_pb2.GetSecretResponse(data=self._secrets.get(request.ID))
        except NotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"secret {request.ID} not found")

    def _ssh_check(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._agents.check(request.ID)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return sshforward_pb2.CheckAgentResponse()

    def _ssh_forward(self, incoming: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        agent_id = (_metadata(context).get(SSH_ID_KEY) or ["default"])[0]
        try:
            for answer in self._agents.forward(agent_id, (m.data for m in incoming)):
                yield sshforward_pb2.BytesMessage(data=answer)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    def _credentials(self, request: Any, context: grpc.ServicerContext) -> Any:
        assert self.registries is not None
        found = self.registries.credentials(request.Host)
        return auth_pb2.CredentialsResponse(Username=found.username, Secret=found.secret)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self.methods = methods

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.methods.get(handler_call_details.method)


def _metadata(context: grpc.ServicerContext) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str):
            found.setdefault(key.lower(), []).append(value)
    return found


def _wrap(data: bytes) -> bytes:
    """A BytesMessage holding `data` (field 1, length-delimited)."""
    return control_pb2.BytesMessage(data=data).SerializeToString()


def _unwrap_one(message: bytes) -> bytes:
    return control_pb2.BytesMessage.FromString(message).data


def _unwrap(messages: Iterable[bytes]) -> Iterator[bytes]:
    for message in messages:
        yield _unwrap_one(message)


# --- attaching: Control.Session <-> our grpc.server ----------------------------------------


class Attached:
    """A session served to the daemon through one Control.Session call. `close()` ends the
    call, the server, the pipe's threads and the private folder."""

    def __init__(self, session: Session, channel: grpc.Channel) -> None:
        self.session = session
        self.folder = socket_folder("session")
        self.closed = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="compimg-session")
        self.server = grpc.server(self.executor,
                                  handlers=[session.handler()],
                                  options=[("grpc.max_receive_message_length", 64 << 20),
                                           ("grpc.max_send_message_length", 64 << 20)])
        address = os.path.join(self.folder, "session.sock")
        try:
            if not self.server.add_insecure_port(f"unix:{address}"):
                raise OSError(f"cannot listen on {address}")
            self.server.start()
            self.local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.local.connect(address)
            call = channel.stream_stream(PATHS["session"], request_serializer=_wrap,
                                         response_deserializer=_unwrap_one)
            self.call = call(self._to_daemon(), metadata=session.metadata())
            self.pump = threading.Thread(target=self._from_daemon, name="compimg-session-pipe", daemon=True)
            self.pump.start()
        except (OSError, RuntimeError) as exc:  # grpc's server says RuntimeError when it cannot listen
            self.close()
            raise EngineError(f"cannot serve the build's session on {address} ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _to_daemon(self) -> Iterator[bytes]:
        while not self.closed.is_set():
            try:
                data = self.local.recv(256 * 1024)
            except OSError:
                return
            if not data:
                return
            yield data

    def _from_daemon(self) -> None:
        try:
            for data in self.call:
                self.local.sendall(data)
        except (grpc.RpcError, OSError) as exc:
            if not self.closed.is_set():
                log.debug("session %s ended: %s", self.session.id, exc)
        finally:
            with contextlib.suppress(OSError):
                self.local.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        call = getattr(self, "call", None)
        if call is not None:
            call.cancel()
        local = getattr(self, "local", None)
        if local is not None:
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_RDWR)
            local.close()
        self.server.stop(grace=None).wait(5)
        self.executor.shutdown(wait=True, cancel_futures=True)
        pump = getattr(self, "pump", None)
        if pump is not None:
            pump.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Attached:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
