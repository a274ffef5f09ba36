"""The daemon's side of a session, for the replay (tests/fake_control.py): what BuildKit asked
of the code's session during a recorded solve, asked again, as the daemon asks it.

- FileSync.DiffCopy (the daemon reads a dir): the same metadata (dir-name, include and
  exclude patterns, followpaths); it reads every STAT, asks for the recorded paths by their
  index in this listing, reads their DATA, then FIN. What was listed and read is handed back
  for the test, and each difference from the recording is a problem: a path listed or not,
  a mode, a requested path the session did not list, a file whose text differs.
- FileSend.DiffCopy (the daemon writes a local export): it sends the recorded STATs, answers
  each REQ with the recorded file, FIN with FIN.
- Anything else (Secrets, Auth, SSH): the recorded request bytes, the answer handed back.
"""

from __future__ import annotations

import base64
import queue
from collections.abc import Callable, Iterator
from typing import Any

from fake_control import CHUNK, FILESEND, FILESYNC, HEALTH, WAIT

HEALTH_SERVING = b"\x08\x01"


def _requests(outgoing: queue.Queue[Any]) -> Iterator[Any]:
    while (item := outgoing.get()) is not None:
        yield item


class DaemonCalls:
    """Calls on one session (`channel`: the daemon's end of its Control.Session stream).
    `fill` puts bound values into recorded text; `fit(template, actual)` says whether a
    text matches a recorded one (binding its placeholders)."""

    def __init__(self, channel: Any, fill: Callable[[str], str], fit: Callable[[str, str], bool]) -> None:
        self.channel = channel
        self.fill = fill
        self.fit = fit

    def health(self) -> str:
        import grpc

        try:
            answer = self.channel.unary_unary(HEALTH)(b"", timeout=WAIT)
        except grpc.RpcError as exc:
            return exc.code().name
        return "SERVING" if answer == HEALTH_SERVING else repr(answer)

    def replay(self, callback: dict[str, Any]) -> dict[str, Any]:
        metadata = [(key, self.fill(value)) for key, values in callback.get("metadata", {}).items() for value in values]
        if callback["method"] == FILESYNC and "stats" in callback:
            return self._read_dir(callback, metadata)
        if callback["method"] == FILESEND and "stats" in callback:
            return self._write_export(callback, metadata)
        return self._raw(callback, metadata)

    def _files(self, callback: dict[str, Any]) -> dict[str, bytes]:
        files = {path: self.fill(text).encode() for path, text in callback.get("files", {}).items()}
        files.update({path: base64.b64decode(blob) for path, blob in callback.get("blobs", {}).items()})
        return files

    def _read_dir(self, callback: dict[str, Any], metadata: list[tuple[str, str]]) -> dict[str, Any]:
        import grpc

        from invoke_compimg.engine.control.proto import fsutil_pb2

        Packet = fsutil_pb2.Packet
        wanted = set(callback.get("requested", []))
        outgoing: queue.Queue[Any] = queue.Queue()
        call = self.channel.stream_stream(FILESYNC, request_serializer=Packet.SerializeToString,
                                          response_deserializer=Packet.FromString)(_requests(outgoing),
                                                                                   metadata=metadata, timeout=WAIT)
        stats: list[Any] = []
        data: dict[int, bytes] = {}
        pending: set[int] = set()
        over = fin_sent = False
        error = None
        try:
            for packet in call:
                if packet.type == Packet.PACKET_STAT:
                    if packet.HasField("stat"):
                        if packet.stat.path in wanted:
                            pending.add(len(stats))
                            data[len(stats)] = b""
                            outgoing.put(Packet(type=Packet.PACKET_REQ, ID=len(stats)))
                        stats.append(packet.stat)
                    else:
                        over = True
                elif packet.type == Packet.PACKET_DATA:
                    if packet.data:
                        data[packet.ID] += packet.data
                    else:
                        pending.discard(packet.ID)
                elif packet.type == Packet.PACKET_FIN:
                    break
                elif packet.type == Packet.PACKET_ERR:
                    error = packet.data.decode("utf-8", "replace")
                    break
                if over and not pending and not fin_sent:
                    outgoing.put(Packet(type=Packet.PACKET_FIN))
                    fin_sent = True
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        finally:
            outgoing.put(None)
        files = {stats[index].path: content for index, content in data.items()}
        listed = [{"path": s.path, "mode": s.mode} for s in stats]
        problems = []
        if error is not None and "error" not in callback:
            problems.append(f"the session answered {error}")
        if listed != callback["stats"]:
            problems.append(f"listed {[s['path'] for s in listed]}, recorded {[s['path'] for s in callback['stats']]}"
                            if [s["path"] for s in listed] != [s["path"] for s in callback["stats"]]
                            else "listed the same paths with other modes")
        problems += [f"{path} was asked for and not listed" for path in sorted(wanted - {s.path for s in stats})]
        for path, text in callback.get("files", {}).items():
            got = files.get(path)
            if got is not None and not self.fit(text, got.decode("utf-8", "replace")):
                problems.append(f"{path} reads {got[:200]!r}, recorded {text[:200]!r}")
        texts = {path: content.decode("utf-8", "replace") for path, content in files.items()}
        return {"dir": (dict(metadata).get("dir-name") or ""), "metadata": metadata,
                "listed": [s["path"] for s in listed], "files": texts, "error": error, "problems": problems}

    def _write_export(self, callback: dict[str, Any], metadata: list[tuple[str, str]]) -> dict[str, Any]:
        import grpc
        from google.protobuf import json_format

        from invoke_compimg.engine.control.proto import fsutil_pb2

        Packet = fsutil_pb2.Packet
        stats = [json_format.ParseDict(s, fsutil_pb2.Stat()) for s in callback["stats"]]
        files = self._files(callback)
        outgoing: queue.Queue[Any] = queue.Queue()
        for stat in stats:
            outgoing.put(Packet(type=Packet.PACKET_STAT, stat=stat))
        outgoing.put(Packet(type=Packet.PACKET_STAT))
        call = self.channel.stream_stream(FILESEND, request_serializer=Packet.SerializeToString,
                                          response_deserializer=Packet.FromString)(_requests(outgoing),
                                                                                   metadata=metadata, timeout=WAIT)
        requested: list[str] = []
        error = None
        try:
            for packet in call:
                if packet.type == Packet.PACKET_REQ:
                    path = stats[packet.ID].path
                    requested.append(path)
                    content = files.get(path, b"")
                    for start in range(0, len(content), CHUNK):
                        outgoing.put(Packet(type=Packet.PACKET_DATA, ID=packet.ID, data=content[start:start + CHUNK]))
                    outgoing.put(Packet(type=Packet.PACKET_DATA, ID=packet.ID))
                elif packet.type == Packet.PACKET_FIN:
                    outgoing.put(Packet(type=Packet.PACKET_FIN))
                    outgoing.put(None)
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        finally:
            outgoing.put(None)
        problems = []
        if error is not None and "error" not in callback:
            problems.append(f"the session answered {error}")
        if error is None and requested != callback.get("requested", []):
            problems.append(f"the session asked for {requested}, recorded {callback.get('requested')}")
        return {"requested": requested, "error": error, "problems": problems}

    def _raw(self, callback: dict[str, Any], metadata: list[tuple[str, str]]) -> dict[str, Any]:
        import grpc

        messages = [base64.b64decode(m) for m in callback.get("daemon", [])]
        call = self.channel.stream_stream(callback["method"])(iter(messages), metadata=metadata, timeout=WAIT)
        answers: list[bytes] = []
        error = None
        try:
            answers.extend(call)
        except grpc.RpcError as exc:
            error = {"code": exc.code().name, "details": exc.details() or ""}
        problems = []
        recorded = callback.get("error")
        if (error or {}).get("code") != (recorded or {}).get("code"):
            problems.append(f"the session answered {error or 'OK'}, recorded {recorded or 'OK'}")
        return {"answers": answers, "error": error, "problems": problems}
