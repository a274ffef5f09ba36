"""A stand-in for a buildkitd listening on tcp: every connection to 127.0.0.1:PORT is piped
into a fresh `POST /grpc` upgrade of the Docker engine (the same Control service), with
TLS (`--cert`, `--key`, ALPN h2) if asked. Run as a process by tests/test_control.py;
prints its port, then serves until killed."""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

from invoke_compimg.engine.client import Engine
from invoke_compimg.engine.control.transport import upgrade


def pipe(read, write, done) -> None:  # type: ignore[no-untyped-def]
    try:
        while data := read(65536):
            write(data)
    except (OSError, ValueError):
        pass
    finally:
        done()


def serve(client: socket.socket, engine_api: Engine) -> None:
    try:
        engine = upgrade(engine_api)
    except Exception:
        client.close()
        return

    def close_both() -> None:
        for closer in (client.close, engine.close):
            with contextlib.suppress(OSError):
                closer()

    threading.Thread(target=pipe, args=(client.recv, engine.sendall, close_both), daemon=True).start()
    threading.Thread(target=pipe, args=(engine.read, client.sendall, close_both), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    api = Engine()
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        if context is not None:
            try:
                client = context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                client.close()
                continue
        serve(client, api)


@contextlib.contextmanager
def running(*args: str) -> Iterator[str]:
    """A stand-in buildkitd's address (tcp://127.0.0.1:PORT), for the block: this file as a process."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"tcp://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.kill()
        process.wait(10)


if __name__ == "__main__":
    sys.exit(main())
