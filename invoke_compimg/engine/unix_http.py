"""A small HTTP/1.1 client for the engine's JSON requests, and its protocol upgrades, over its unix socket.

An unchanged build asks the engine only a few questions (its version, whether an image of a
name exists), and a BuildKit build only a few more (tag the result, remove what it
superseded); the Docker SDK, with requests and urllib3, costs a command about 0.1 s of CPU to
import, which a solve on a two-core machine feels. Those requests go through this client and
the standard library's http.client when the engine is a unix socket. Streams (pull, push, the
classic builder, containers), and every other transport, go through the SDK.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Collection, Sequence
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        # A unix socket whose queue of connections not yet accepted is full fails a connect
        # with a timeout set at once (EAGAIN) instead of waiting: many requests at the same time
        # (stages in parallel, an engine busy accepting) must not fail for that. Tried again
        # until the timeout.
        deadline = time.monotonic() + (self.timeout or 0.0)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError:
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)
                continue
            except OSError:
                sock.close()
                raise
            self.sock = sock
            return


class Answer(Exception):
    """An HTTP error status from the engine, with its message (`{"message": ...}`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnixJSON:
    """JSON requests without a body on one unix socket. A connection per request: connecting
    to a local socket costs microseconds, and a kept-alive connection the engine closed
    meanwhile could not be told from one lost mid-request."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def get(self, url: str) -> Any | None:
        """The decoded answer to `GET url`; see `request`."""
        return self.request("GET", url)

    def request(self, method: str, url: str, *, none_for: Collection[int] = (404,)) -> Any | None:
        """The decoded answer to `METHOD url` (None for an empty body); None for a status of
        `none_for`; `Answer` for another error status; OSError when the engine cannot be reached
        (ConnectionError when it went away)."""
        connection = _UnixConnection(self.path, self.timeout)
        try:
            headers = {"Accept": "application/json", "Connection": "close"}
            if method != "GET":
                headers["Content-Length"] = "0"
            connection.request(method, url, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (FileNotFoundError, PermissionError, ConnectionRefusedError):
            raise  # no engine there (or not ours to use): said as such
        except (http.client.HTTPException, OSError) as exc:
            raise ConnectionError(f"Connection aborted ({exc or type(exc).__name__})") from exc
        finally:
            connection.close()
        if response.status in none_for:
            return None
        if response.status >= 400:  # a proxy in front of the engine may answer in HTML
            raise Answer(response.status, _message(body))
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            raise ConnectionError(f"the engine's answer to {method} {url} is not JSON: {body[:80]!r}") from None

    def upgrade(self, url: str, headers: Sequence[tuple[str, str]]) -> tuple[socket.socket, http.client.HTTPResponse]:
        """POST `url` asking to switch protocols; the socket and the `101` response, whose
        `fp.read1` hands on first what the engine sent right after it (an HTTP/2 server's
        SETTINGS come at once; keep the response: dropping it closes that reader).
        `headers` may repeat a name (`/session` takes one line per method served).
        `Answer` for another status. The SDK has no API for this (its `attach_socket` is for
        containers), and reaching into requests' internals to take the socket back costs the
        SDK's import (0.1 s) first."""
        connection = _UnixConnection(self.path, self.timeout)
        try:
            connection.putrequest("POST", url, skip_accept_encoding=True)
            for name, value in [("Connection", "Upgrade"), ("Content-Length", "0"), *headers]:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()  # a 1xx answer has no body: the stream stays as it is
            if response.status != 101:
                raise Answer(response.status, _message(response.read(4096)) or f"{response.status} {response.reason}")
        except (FileNotFoundError, PermissionError, ConnectionRefusedError, Answer):
            connection.close()
            raise
        except (http.client.HTTPException, OSError) as exc:
            connection.close()
            raise ConnectionError(f"Connection aborted ({exc or type(exc).__name__})") from exc
        sock = connection.sock
        sock.settimeout(None)
        return sock, response

    def close(self) -> None:
        """Nothing is held between requests."""


def _message(body: bytes) -> str:
    """The engine's `{"message": ...}`, or the text (a proxy may answer in HTML), on one line."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    message = data.get("message") if isinstance(data, dict) else body.decode("utf-8", "replace")
    return " ".join(str(message).split())[:300]
