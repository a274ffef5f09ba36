"""The Control client: list workers, attach sessions, solve with progress, cancel.

A solve (moby/buildkit client/solve.go at v0.8) is two calls with the same random `Ref`:
`Control.Solve` (the SolveRequest: frontend `dockerfile.v0` and its attrs, one exporter and
its attrs, cache imports/exports, the session id, entitlements), which returns when the
build is over with the exporter's response (the `moby` exporter names the image ID
`containerimage.digest`), and `Control.Status`, a stream of StatusResponses for that ref,
which ends after the solve. Cancelling the Solve call cancels the build on the daemon: the
running step's process is killed.

Progress is handed over as `engine.buildkit.StatusResponse`s, decoded by the same decoder the
`/build` API path uses, on the caller's thread (so the callback needs no locking and Ctrl-C
reaches the caller).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets as random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ...errors import EngineError, Interrupted
from ...records import record
from ..protowire import ProtocolError
from .grpc_frames import UNAVAILABLE
from .h2_client import ByteStream, Call, Connection, RpcError
from .messages import LIST_WORKERS, SOLVE, STATUS, solve_request, solve_response, status_request
from .transport import TLS, engine_connection, engine_session, service_connection

if TYPE_CHECKING:
    from ..buildkit.wire import StatusResponse
    from ..client import Engine
    from .session import Attached, EngineAttached, Export, Session

# What serves the session (session.py and what it serves: the file walk, the providers, the
# h2 server) is imported only once a solve is on its way, while the daemon starts it: see
# `Control.solve`'s `serve`. So is the protobuf runtime: a solve's own messages are written by
# hand (`messages`).

STATUS_DRAIN_SECONDS = 3.0  # after the solve, as BuildKit's client waits for the last statuses
POLL_SECONDS = 0.1


@record
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@record
class Worker:
    id: str
    platforms: tuple[Platform, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


@record
class Exporter:
    """One exporter and its attrs. Use the constructors: `image` (`moby` on a Docker engine,
    `image` on buildkitd), `local`, `tar`."""

    type: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    output: Export | None = None

    @classmethod
    def image(cls, names: Sequence[str] = (), *, push: bool = False, engine: bool = True) -> Exporter:
        """Store the image (on a Docker engine: in its image store, exporter `moby`);
        `push` pushes `names` (buildkitd's `image` exporter)."""
        attrs = {"name": ",".join(names)} if names else {}
        if push:
            attrs["push"] = "true"
        return cls("moby" if engine and not push else "image", attrs)

    @classmethod
    def local(cls, dest: str) -> Exporter:
        from .session import LocalExport

        return cls("local", {}, LocalExport(str(dest)))

    @classmethod
    def tar(cls, path: str) -> Exporter:
        from .session import TarExport

        return cls("tar", {}, TarExport(str(path)))


@record
class CacheEntry:
    """A cache import or export: `type` registry, local, inline; attrs like `ref`, `mode`."""

    type: str
    attrs: Mapping[str, str] = field(default_factory=dict)


def dockerfile_attrs(*, filename: str = "Dockerfile", target: str | None = None,
                     build_args: Mapping[str, str] | None = None,
                     no_cache: bool = False, platform: str | None = None, network: str | None = None,
                     context: str = "context",
                     dockerfile: str = "dockerfile") -> dict[str, str]:
    """The `dockerfile.v0` frontend's attrs (frontend/dockerfile/builder/build.go):
    `context`/`dockerfile` name the session dirs it reads (`contextkey`/`dockerfilekey`)."""
    attrs = {"filename": filename}
    if target:
        attrs["target"] = target
    for key, value in (build_args or {}).items():
        attrs[f"build-arg:{key}"] = value
    if no_cache:
        attrs["no-cache"] = ""
    if platform:
        attrs["platform"] = platform
    if network:
        attrs["force-network-mode"] = network
    if context != "context":
        attrs["contextkey"] = context
    if dockerfile != "dockerfile":
        attrs["dockerfilekey"] = dockerfile
    return attrs


class SolveFailed(EngineError):
    """The daemon ended the solve with an error; `details` is BuildKit's message, as is, and
    `grpc_code` the gRPC status name (UNKNOWN for a failed step, CANCELED, ...)."""

    def __init__(self, details: str, grpc_code: str) -> None:
        self.details = details
        self.grpc_code = grpc_code
        super().__init__(f"BuildKit: {details}")


class Cancelled(Interrupted):
    """The solve was cancelled through its `cancel` event."""

    def __init__(self) -> None:
        super().__init__("the build was cancelled; BuildKit stopped it")


class Control:
    """A connection to a Control service (see `connect`). Thread-safe: several solves may
    run at once, each on its own thread. A connection that was lost (the engine restarted, a
    proxy cut it) is made again for the next call."""

    def __init__(self, dial: Callable[[], Connection], address: str,
                 session_dial: Callable[[Sequence[tuple[str, str]]], ByteStream | None] | None = None) -> None:
        self.address = address
        self._dial = dial
        self._session_dial = session_dial  # the engine's own session connection, where it has one
        self._lock = threading.Lock()
        self._closed = False
        self._connection = dial()  # at once: an unreachable service is one line here

    def connection(self) -> Connection:
        with self._lock:
            if self._closed:  # a late call on another thread must not open a connection nobody closes
                raise EngineError(f"the connection to {self.address} was closed")
            if not self._connection.alive:
                self._connection.close()
                self._connection = self._dial()
            return self._connection

    def list_workers(self) -> list[Worker]:
        from .proto import control_pb2

        try:
            answer = control_pb2.ListWorkersResponse.FromString(self.connection().unary(
                LIST_WORKERS, control_pb2.ListWorkersRequest().SerializeToString(), timeout=30))
        except RpcError as exc:
            raise self._error("listing BuildKit's workers", exc) from exc
        return [Worker(r.ID, tuple(Platform(p.OS, p.Architecture, p.Variant) for p in r.platforms), dict(r.Labels))
                for r in answer.record]

    def attach(self, session: Session) -> Attached | EngineAttached:
        """Serve `session` to the daemon until the returned object is closed (a context
        manager). Solves name it by `session.id`. On a Docker engine reached through its unix
        socket, on the engine's own `POST /session` connection (`EngineAttached`: one HTTP/2
        layer), else through `Control.Session` on this connection. An engine
        that answers `/session` with an error status gets `Control.Session`; one that cannot be
        reached there is an EngineError, as it would be for the solve."""
        from .session import Attached, EngineAttached

        if self._session_dial is not None:
            own = self._session_dial(session.metadata())
            if own is not None:
                try:
                    return EngineAttached(session, own)
                except BaseException:
                    own.close()
                    raise
        try:
            return Attached(session, self.connection())
        except RpcError as exc:
            raise self._error("attaching a session", exc) from exc

    def solve(self, *, session: Session | None = None, serve: Serving | None = None,
              frontend: str = "dockerfile.v0",
              frontend_attrs: Mapping[str, str] | None = None, exporter: Exporter | None = None,
              cache_imports: Sequence[CacheEntry] = (), cache_exports: Sequence[CacheEntry] = (),
              entitlements: Sequence[str] = (), on_status: Callable[[StatusResponse], object] | None = None,
              cancel: threading.Event | None = None, ref: str | None = None) -> dict[str, str]:
        """Run one solve and return the exporter's response. `session` must be attached
        (`attach`) for the solve to read files, secrets or write a local/tar export; or
        `serve` makes and attaches it once the SolveRequest is sent (the daemon waits for a
        session it was told of), and it is closed after the solve. `on_status` gets every
        StatusResponse on this thread. Setting `cancel` (or Ctrl-C here) cancels the solve on
        the daemon: raises Cancelled (KeyboardInterrupt goes on)."""
        if session is not None and serve is not None:
            raise ValueError("give a session or a way to serve one, not both")
        ref = ref or random.token_hex(13)
        attrs = dict(frontend_attrs or {})
        if cache_imports:
            attrs["cache-imports"] = json.dumps([{"Type": c.type, "Attrs": dict(c.attrs)} for c in cache_imports])
        request = solve_request(
            ref=ref, frontend=frontend, frontend_attrs=attrs,
            session=session.id if session else serve.session_id if serve else "",
            exporter=exporter.type if exporter else "", exporter_attrs=exporter.attrs if exporter else None,
            cache_imports=[(c.type, c.attrs) for c in cache_imports],
            cache_exports=[(c.type, c.attrs) for c in cache_exports], entitlements=entitlements)
        output = exporter.output if exporter else None
        if output is not None and session is None and serve is None:
            raise ValueError(f"a {exporter.type if exporter else ''} export needs a session")
        with contextlib.ExitStack() as served:  # the export target, and a session `serve` makes
            if session is not None:
                served.enter_context(session.exporting(output))
            return self._run(ref, request, on_status, cancel, served, serve, output)

    def _run(self, ref: str, request: bytes, on_status: Callable[[StatusResponse], object] | None,
             cancel: threading.Event | None, served: contextlib.ExitStack, serve: Serving | None,
             output: Export | None) -> dict[str, str]:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        connection = self.connection()
        try:
            status_call = connection.call(STATUS)
            status_call.send(status_request(ref), end=True)
            solve_call = connection.call(SOLVE)
        except RpcError as exc:  # the connection went between asking for it and using it
            raise self._error("the solve", exc) from exc
        reader = threading.Thread(target=_read_status, args=(status_call, events), name="compimg-buildkit-status",
                                  daemon=True)
        reader.start()
        solve_call.add_done_callback(lambda call: events.put(("solved", call)))
        solved: Call | None = None
        status_over = False
        drain_until = 0.0
        try:
            with contextlib.suppress(RpcError):  # the call failed at once: its status says why, below
                solve_call.send(request, end=True)
            if serve is not None and solve_call.code is None:  # (one that failed at once says why below)
                # the daemon starts the solve meanwhile, and waits for the session
                session = serve.make()
                served.enter_context(session.exporting(output))
                served.enter_context(self.attach(session))
            while solved is None or (not status_over and time.monotonic() < drain_until):
                if cancel is not None and cancel.is_set() and solved is None:
                    raise Cancelled()
                try:  # short waits: a Ctrl-C or a cancel is seen within POLL_SECONDS
                    kind, value = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if kind == "status":
                    if on_status is not None:
                        on_status(value)
                elif kind == "solved":
                    solved = value
                    drain_until = time.monotonic() + STATUS_DRAIN_SECONDS
                else:
                    status_over = True
        except BaseException:
            solve_call.cancel()  # KeyboardInterrupt, a callback's error, Cancelled: the daemon stops the build
            raise
        finally:
            status_call.cancel()
            reader.join(5)
        try:
            return solve_response(solved.result())
        except RpcError as exc:
            raise self._error("the solve", exc) from exc
        except ProtocolError as exc:
            raise EngineError(f"the solve at {self.address} answered with a message that is not a SolveResponse "
                              f"({exc})") from exc

    def _error(self, what: str, exc: RpcError) -> EngineError:
        if exc.code == UNAVAILABLE:
            who = self.address if self.address.startswith("the ") else f"BuildKit at {self.address}"
            return EngineError(f"lost {who} during {what} ({exc.details}); check that it is running, then retry")
        if what == "the solve":
            return SolveFailed(exc.details, exc.name)
        return EngineError(f"{what} at {self.address}: {exc.details}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connection.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dockerfile_session(*, context: str, allow: Sequence[str] | None, dockerfile: bytes, shared_key: str,
                       files: Mapping[str, tuple[bytes, int]] | None = None, files_time_ns: int = 0,
                       root_under: str = "",
                       secrets: Sequence[tuple[str, str | None, str | None]] = (),
                       ssh: Mapping[str, str] | None = None,
                       registry_hosts: Iterable[str] | None = None,
                       context_request: tuple[Sequence[str] | None, Sequence[str] | None] | None = None,
                       session_id: str | None = None) -> Session:
    """A session for one Dockerfile solve: the context folder (only `allow`, when given) as
    dir `context`, with `files` (path -> (bytes, mode): what the lowering generated, dated
    `files_time_ns` to the second, or by their content when 0) beside
    its own (which then go under the folder `root_under`), `dockerfile` as the file
    `Dockerfile` of dir `dockerfile` (the names the frontend reads), `secrets` as (id, file
    path, environment variable), `ssh` agent sockets by id (only those), `registry_hosts`
    the registries whose credentials may be asked for (None: any the user has a login for),
    `context_request` the (followpaths, exclude-patterns) the frontend is expected to ask the
    context with (listed ahead; None: listed when asked)."""
    from .fswalk import Dir, Request, VirtualFile
    from .providers import Registries, Secret
    from .session import Session

    generated = {path: VirtualFile(data, mode, files_time_ns) for path, (data, mode) in (files or {}).items()}
    return Session(shared_key=shared_key,
                   dirs=[Dir("context", context, allow=allow, files=generated, root_under=root_under),
                         Dir("dockerfile", None, files={"Dockerfile": VirtualFile(dockerfile)})],
                   secrets=[Secret(secret_id, path=path, env=env) for secret_id, path, env in secrets],
                   ssh=dict(ssh or {}), registries=Registries(hosts=registry_hosts),
                   expected={} if context_request is None else {
                       "context": Request(follow=context_request[0], exclude=context_request[1])},
                   id=session_id or new_session_id())


class Serving:
    """A session to serve with a solve, made and attached once the solve is sent (see
    `Control.solve`): `make(session_id=...)` makes it, `dockerfile_session` with its arguments."""

    def __init__(self, make: Callable[..., Session]) -> None:
        self.session_id = new_session_id()
        self._make = make

    def make(self) -> Session:
        return self._make(session_id=self.session_id)


def new_session_id() -> str:
    return os.urandom(16).hex()  # uuid4's length, without uuid's import


def _read_status(call: Call, events: queue.Queue[tuple[str, Any]]) -> None:
    from ..buildkit.wire import decode_status  # (on this thread, while the daemon starts the solve)

    try:
        for payload in call:
            try:
                events.put(("status", decode_status(payload)))
            except ValueError:  # ProtocolError: an unreadable update is left out, the build goes on
                continue
    except RpcError:
        pass  # cancelled after the solve, or the solve failed: its own error says why
    finally:
        events.put(("status-over", None))


def connect(address: str | None = None, *, engine: Engine | None = None, tls: TLS | None = None,
            timeout: float = 10.0) -> Control:
    """A Control client: through a Docker `engine` (its `POST /grpc`), or to a buildkitd at
    `address` (`unix://PATH`, `tcp://HOST:PORT`, with `tls` files). Connects at once; an
    unreachable address or a TLS mismatch is one EngineError line."""
    if (address is None) == (engine is None):
        raise ValueError("give either address or engine")
    if engine is not None:
        return Control(lambda: engine_connection(engine, timeout), f"the Docker engine at {engine.address}",
                       lambda metadata: engine_session(engine, metadata))
    assert address is not None
    return Control(lambda: service_connection(address, tls, timeout), address)


__all__ = ["CacheEntry", "Cancelled", "Control", "Exporter", "Platform", "Serving", "SolveFailed", "Worker",
           "connect", "dockerfile_attrs", "dockerfile_session", "new_session_id"]
