"""engine/control without an engine: the .dockerignore matcher, Go's filepath.Match, the
fsutil walk (order, mode bits), FileSync's narrowness against a fake daemon, and the safety
of a local export (FileSend) fed by a fake daemon."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from invoke_compimg import patterns
from invoke_compimg.engine.control import fswalk
from invoke_compimg.engine.control.diffcopy_receive import ExportRefused, TarFile, receive_into
from invoke_compimg.engine.control.diffcopy_send import Refused, Sender
from invoke_compimg.engine.control.proto import fsutil_pb2

Packet = fsutil_pb2.Packet

# --- the .dockerignore matcher (moby pkg/fileutils semantics) -------------------------------


@pytest.mark.parametrize(("rules", "path", "excluded"), [
    (["*.go"], "a.go", True),
    (["*.go"], "d/a.go", False),  # `*` stays in one folder
    (["**/*.go"], "d/e/a.go", True),
    (["**/*.go"], "a.go", True),  # `**/` may be nothing
    (["d"], "d/e/f.txt", True),  # a folder pattern covers what is inside
    (["d/*"], "d", False),
    (["a/**/b"], "a/b", True),
    (["a/**/b"], "a/x/y/b", True),
    (["**"], "anything/at/all", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["!README.md", "*.md"], "README.md", True),  # the last match decides
    (["docs", "!docs/keep.txt"], "docs/keep.txt", False),
    (["docs", "!docs/keep.txt"], "docs/drop.txt", True),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[a-c].txt"], "b.txt", True),
    (["[^a-c].txt"], "b.txt", False),
    (["a.txt"], "aXtxt", False),  # `.` is literal
    (["./a/../b.txt"], "b.txt", True),  # patterns are cleaned
    (["\\*.txt"], "*.txt", True),
    (["\\*.txt"], "a.txt", False),
])
def test_dockerignore_patterns(rules: list[str], path: str, excluded: bool) -> None:
    assert patterns.Matcher(rules).matches(path) is excluded


@pytest.mark.parametrize("bad", ["!", "[", "a[", "[]a]x[", "x\\"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(patterns.BadPattern):
        patterns.Matcher([bad])


def test_exceptions_below_an_excluded_folder_are_known() -> None:
    matcher = patterns.Matcher(["docs", "!docs/keep.txt"])
    assert matcher.exceptions and matcher.may_hold_exception("docs")
    assert not matcher.may_hold_exception("other")


def test_read_dockerignore_as_docker_cli_does() -> None:
    text = "\ufeff# a comment\n\n  /build/  \n!  /build/keep\n*.log\n# more\n./x/../y\n"
    assert patterns.read_dockerignore(text) == ["build", "!build/keep", "*.log", "y"]


@pytest.mark.parametrize(("pattern", "name", "hit"), [
    ("*", "abc", True), ("*", "a/b", False), ("a/*", "a/b", True), ("a?c", "abc", True),
    ("a?c", "a/c", False), ("[abc]x", "bx", True), ("[^abc]x", "bx", False), ("[a-z]9", "q9", True),
    ("\\*", "*", True), ("*.txt", ".txt", True), ("a*b*c", "aXbYc", True), ("a*b*c", "aXbY/c", False),
])
def test_go_filepath_match(pattern: str, name: str, hit: bool) -> None:
    assert patterns.go_match(pattern, name) is hit


def test_match_prefix_keeps_the_folders_on_the_way() -> None:
    assert patterns.match_prefix("src/app/main.go", "src") == (True, True)
    assert patterns.match_prefix("src/app/main.go", "lib") == (False, True)
    assert patterns.match_prefix("src/*", "src/x") == (True, False)


# --- the fsutil walk -----------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walk_order_is_go_filepath_walk(tmp_path: Path) -> None:
    # Bytewise names per folder, a folder's contents right after it: "a/b" before "a-b" and
    # "a.txt", although a plain sort of full paths puts '/' (0x2f) after '-' and '.'.
    _tree(tmp_path, {"a.txt": "", "a/b": "", "a-b": "", "B": "", "a/c/d": "", "é": ""})
    paths = [e.path for e in fswalk.walk(fswalk.Dir("context", str(tmp_path)))]
    assert paths == ["B", "a", "a/b", "a/c", "a/c/d", "a-b", "a.txt", "é"]
    assert paths != sorted(paths)


def test_walk_sends_go_file_mode_bits(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o750)
    (tmp_path / "dir").chmod(0o750)
    (tmp_path / "suid").write_text("x")
    (tmp_path / "suid").chmod(0o4755)
    (tmp_path / "sticky").mkdir()
    (tmp_path / "sticky").chmod(0o1777)
    (tmp_path / "link").symlink_to("suid")
    os.mkfifo(tmp_path / "fifo")
    entries = {e.path: e for e in fswalk.walk(fswalk.Dir("context", str(tmp_path)))}
    assert entries["dir"].mode == (1 << 31) | 0o750
    assert entries["suid"].mode == (1 << 23) | 0o755
    assert entries["sticky"].mode == (1 << 31) | (1 << 20) | 0o777
    assert entries["link"].mode == (1 << 27) | 0o777 and entries["link"].linkname == "suid"
    assert entries["fifo"].mode & ~0o777 == 1 << 25
    assert [p for p, e in entries.items() if e.requestable] == ["suid"]
    assert entries["suid"].mtime_ns == os.lstat(tmp_path / "suid").st_mtime_ns


def test_walk_hard_links_name_the_first_path(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("same")
    os.link(tmp_path / "a", tmp_path / "b")
    entries = {e.path: e for e in fswalk.walk(fswalk.Dir("context", str(tmp_path)))}
    assert entries["b"].linkname == "a" and entries["b"].size == 0 and not entries["b"].requestable
    assert entries["a"].requestable


def test_walk_allow_list_include_and_exclude(tmp_path: Path) -> None:
    _tree(tmp_path, {"src/a.go": "", "src/b.go": "", "src/doc.md": "", "vendor/x/y.go": "", "README": ""})
    only_src = fswalk.Dir("context", str(tmp_path), allow=["src/a.go", "src/doc.md"])
    assert [e.path for e in fswalk.walk(only_src)] == ["src", "src/a.go", "src/doc.md"]
    everything = fswalk.Dir("context", str(tmp_path))
    request = fswalk.Request(include=["src/*.go", "README"], exclude=["src/b.go"])
    assert [e.path for e in fswalk.walk(everything, request)] == ["README", "src", "src/a.go"]
    excluded_folder = fswalk.Request(exclude=["vendor", "!vendor/x/y.go"])
    assert [e.path for e in fswalk.walk(everything, excluded_folder)] == [
        "README", "src", "src/a.go", "src/b.go", "src/doc.md", "vendor", "vendor/x", "vendor/x/y.go"]


def test_virtual_files_sit_at_the_top_and_hide_real_ones(tmp_path: Path) -> None:
    _tree(tmp_path, {"Dockerfile": "FROM real"})
    directory = fswalk.Dir("dockerfile", str(tmp_path), files={"Dockerfile": fswalk.VirtualFile(b"FROM ours", 0o600)})
    [entry] = fswalk.walk(directory)
    assert entry.source == b"FROM ours" and entry.mode == 0o600 and entry.size == 9
    with pytest.raises(ValueError, match="clean path inside the dir"):
        fswalk.Dir("x", None, files={"../Dockerfile": fswalk.VirtualFile(b"")})


def test_virtual_files_in_folders_beside_the_root_under_a_folder_of_its_own(tmp_path: Path) -> None:
    """Heredoc files: `.compimg-heredoc/<digest>/EOT` beside the user's files, which sit under
    `ctx/` (a `COPY ctx/ .` never sees ours); the allow-list and followpaths speak of the root."""
    _tree(tmp_path, {"a.txt": "a", "sub/b.txt": "b", "skip.txt": "s"})
    directory = fswalk.Dir("context", str(tmp_path), allow=["a.txt", "sub"], root_under="ctx",
                           files={".compimg-heredoc/ab/EOT": fswalk.VirtualFile(b"x\n")})
    entries = fswalk.walk(directory)
    assert [e.path for e in entries] == [".compimg-heredoc", ".compimg-heredoc/ab", ".compimg-heredoc/ab/EOT",
                                         "ctx", "ctx/a.txt", "ctx/sub", "ctx/sub/b.txt"]
    assert {e.path: e.source for e in entries}["ctx/sub/b.txt"] == "sub/b.txt"
    followed = fswalk.walk(directory, fswalk.Request(follow=["ctx/a.txt"]))
    assert [e.path for e in followed] == ["ctx", "ctx/a.txt"]
    with pytest.raises(ValueError, match="root_under"):
        fswalk.Dir("context", str(tmp_path), root_under="ctx", files={"ctx/x": fswalk.VirtualFile(b"")})


# --- FileSync: what a daemon can get out of a dir ------------------------------------------


class FakeDaemon:
    """The receive side of fsutil, scripted: reads our stats, asks for `wanted` indexes (or
    raw ids), collects the data, then sends FIN."""

    def __init__(self, requests: list[int] | None = None) -> None:
        self.requests = requests
        self.stats: list[fsutil_pb2.Stat] = []
        self.data: dict[int, bytes] = {}
        self.inbox: list[Packet] = []
        self.stats_over = threading.Event()
        self.files_done = threading.Event()
        self.pending: set[int] = set()

    def outgoing(self) -> Iterator[Packet]:
        self.stats_over.wait(10)
        ids = self.requests if self.requests is not None else [
            i for i, s in enumerate(self.stats) if fswalk.requestable(s.mode) and not s.linkname]
        self.pending = set(ids)
        if not ids:
            self.files_done.set()
        for packet_id in ids:
            yield Packet(type=Packet.PACKET_REQ, ID=packet_id)
        self.files_done.wait(10)
        yield Packet(type=Packet.PACKET_FIN)

    def run(self, sender: Sender) -> list[Packet]:
        return self.serve(sender.run)

    def serve(self, handler: Callable[[Iterator[bytes]], Iterable[bytes]]) -> list[Packet]:
        """Play one DiffCopy against `handler` (incoming packets -> outgoing packets, encoded)."""
        received = []
        for message in handler(p.SerializeToString() for p in self.outgoing()):
            packet = Packet.FromString(message)
            received.append(packet)
            if packet.type == Packet.PACKET_STAT:
                if packet.HasField("stat"):
                    self.stats.append(packet.stat)
                else:
                    self.stats_over.set()
            elif packet.type == Packet.PACKET_DATA:
                if packet.data:
                    self.data[packet.ID] = self.data.get(packet.ID, b"") + packet.data
                else:
                    self.pending.discard(packet.ID)
                    if not self.pending:
                        self.files_done.set()
        return received


def _outside_setup(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ctx"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE-SECRET")
    _tree(root, {"app.txt": "inside"})
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "up").symlink_to("../outside/secret.txt")
    (root / "updir").symlink_to("../outside")
    return root, outside


def test_filesync_sends_links_as_links_and_nothing_from_outside(tmp_path: Path) -> None:
    root, _ = _outside_setup(tmp_path)
    directory = fswalk.Dir("context", str(root))
    for request in (fswalk.Request(), fswalk.Request(follow=["passwd", "up", "updir/secret.txt", "../outside"]),
                    fswalk.Request(include=["../outside/secret.txt", "/etc/passwd", "updir/*"])):
        entries = fswalk.walk(directory, request)
        daemon = FakeDaemon()
        packets = daemon.run(Sender(entries, str(root)))
        sent = b"".join(p.data for p in packets)
        assert b"OUTSIDE-SECRET" not in sent and b"root:" not in sent
        links = {s.path: s.linkname for s in daemon.stats if s.mode & fswalk.GO_SYMLINK}
        assert all(p in {"passwd", "up", "updir"} for p in links)
        if "passwd" in links:
            assert links["passwd"] == "/etc/passwd"
        assert all(not (p.startswith("../") or p.startswith("/")) for p in (s.path for s in daemon.stats))
        assert packets[-1].type == Packet.PACKET_FIN


def test_followpaths_resolve_links_inside_the_root(tmp_path: Path) -> None:
    _tree(tmp_path, {"real/file.txt": "data", "other.txt": ""})
    (tmp_path / "alias").symlink_to("real")
    (tmp_path / "rooted").symlink_to("/real/file.txt")  # absolute: taken from the root, like a chroot
    entries = fswalk.walk(fswalk.Dir("context", str(tmp_path)), fswalk.Request(follow=["alias/file.txt", "rooted"]))
    assert [e.path for e in entries] == ["alias", "real", "real/file.txt", "rooted"]


@pytest.mark.parametrize("bad_id", [0, 1, 99, 2, -1])
def test_filesync_refuses_requests_it_does_not_serve(tmp_path: Path, bad_id: int) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to("file")
    entries = fswalk.walk(fswalk.Dir("context", str(tmp_path)))  # dir, file, link
    assert [e.path for e in entries] == ["dir", "file", "link"]
    requests = [1, 1] if bad_id == 1 else [bad_id & 0xFFFFFFFF]  # 1 twice: a second request is refused
    with pytest.raises(Refused):
        FakeDaemon(requests).run(Sender(entries, str(tmp_path)))


def test_filesync_does_not_follow_a_file_swapped_for_a_link(tmp_path: Path) -> None:
    root, outside = _outside_setup(tmp_path)
    entries = fswalk.walk(fswalk.Dir("context", str(root)))
    (root / "app.txt").unlink()
    (root / "app.txt").symlink_to(outside / "secret.txt")  # after the walk, before the request
    index = [e.path for e in entries].index("app.txt")
    with pytest.raises(OSError):
        FakeDaemon([index]).run(Sender(entries, str(root)))


def test_filesync_serves_data_and_virtual_files(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(100_000))
    directory = fswalk.Dir("context", str(tmp_path), files={"Dockerfile": fswalk.VirtualFile(b"FROM scratch\n")})
    entries = fswalk.walk(directory)
    daemon = FakeDaemon()
    daemon.run(Sender(entries, str(tmp_path)))
    by_path = {s.path: i for i, s in enumerate(daemon.stats)}
    assert daemon.data[by_path["big"]] == (tmp_path / "big").read_bytes()
    assert daemon.data[by_path["Dockerfile"]] == b"FROM scratch\n"


def test_session_refuses_an_unknown_dir(tmp_path: Path) -> None:
    from invoke_compimg.engine.control import h2_server
    from invoke_compimg.engine.control.session import Session

    class Aborted(Exception):
        pass

    class Context:
        code: object = None

        def invocation_metadata(self) -> list[tuple[str, str]]:
            return [("dir-name", "home")]

        def abort(self, code: object, details: str) -> None:
            self.code = code
            raise Aborted(details)

    session = Session(dirs=[fswalk.Dir("context", str(tmp_path))])
    context = Context()
    with pytest.raises(Aborted, match="no access allowed to dir 'home'"):
        list(session._filesync(iter(()), context))  # type: ignore[arg-type]
    assert context.code == h2_server.NOT_FOUND


class _Metadata:
    """A FileSync call's context as the handler sees it: its gRPC metadata, and abort."""

    def __init__(self, **metadata: list[str]) -> None:
        self.metadata = [(key, value) for key, values in metadata.items() for value in values]

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"aborted: {details}")


def _diffcopy(session: Any, dir_name: str, request: fswalk.Request) -> FakeDaemon:
    metadata = {"dir-name": [dir_name], "followpaths": request.follow, "exclude-patterns": request.exclude,
                "include-patterns": request.include}
    context = _Metadata(**{k: list(v) for k, v in metadata.items() if v is not None})
    daemon = FakeDaemon()
    daemon.serve(lambda incoming: session._filesync(incoming, context))
    return daemon


def test_the_context_listed_ahead_answers_only_the_request_it_was_listed_for(tmp_path: Path) -> None:
    """The daemon's first FileSync call (the Dockerfile) starts the listing of the context
    request the session expects; the `.dockerignore` probe leaves it; the same request is
    answered from it, with what a listing made then would send; another request is listed
    anew and stops it."""
    from invoke_compimg.engine.control.session import Session

    _tree(tmp_path, {f"src/d{i % 3}/f{i}.txt": f"{i}\n" for i in range(60)} | {"other/x.txt": "x", "a.md": "m"})
    expected = fswalk.Request(follow=["src", "a.md"], exclude=["src/d1"])

    def session() -> Session:
        dirs = [fswalk.Dir("context", str(tmp_path)), fswalk.Dir("dockerfile", None, files={
            "Dockerfile": fswalk.VirtualFile(b"FROM scratch\n")})]
        return Session(dirs=dirs, expected={"context": expected})

    def sent(daemon: FakeDaemon) -> list[tuple[str, int, bytes]]:
        return [(s.path, s.size, daemon.data.get(i, b"")) for i, s in enumerate(daemon.stats)]

    fresh = sent(_diffcopy(Session(dirs=[fswalk.Dir("context", str(tmp_path))]), "context", expected))
    assert len(fresh) == 3 + 40 + 1  # src, d0, d2, their files, a.md (d1 excluded)
    served = session()
    assert sent(_diffcopy(served, "dockerfile", fswalk.Request(follow=["Dockerfile"])))[0][2] == b"FROM scratch\n"
    assert sent(_diffcopy(served, "context", fswalk.Request(follow=[".dockerignore"]))) == []
    assert served.listed_ahead == 0
    # the daemon's order of followpaths is its own: the same paths are the same request
    reordered = fswalk.Request(follow=["a.md", "src"], exclude=["src/d1"])
    assert sent(_diffcopy(served, "context", reordered)) == fresh
    assert served.listed_ahead == 1
    assert sent(_diffcopy(served, "context", expected)) == fresh and served.listed_ahead == 1  # once

    for different in (fswalk.Request(follow=["src", "a.md", "other"], exclude=["src/d1"]),
                      fswalk.Request(follow=["src", "a.md"]),
                      fswalk.Request(follow=["src", "a.md"], exclude=["src/d2"]),
                      fswalk.Request(include=["src/d0"], follow=["src", "a.md"], exclude=["src/d1"])):
        other = session()
        _diffcopy(other, "dockerfile", fswalk.Request(follow=["Dockerfile"]))
        ahead = other._ahead["context"]  # type: ignore[index]
        assert sent(_diffcopy(other, "context", different)) == sent(
            _diffcopy(Session(dirs=[fswalk.Dir("context", str(tmp_path))]), "context", different))
        assert other.listed_ahead == 0 and ahead._stopped.is_set()
        assert "context" not in other._ahead  # type: ignore[operator]


def test_a_listing_ahead_stops_with_its_session(tmp_path: Path) -> None:
    from invoke_compimg.engine.control.session import Session

    _tree(tmp_path, {f"d{i % 50}/f{i}": "" for i in range(5000)})
    session = Session(dirs=[fswalk.Dir("context", str(tmp_path)), fswalk.Dir("dockerfile", None)],
                      expected={"context": fswalk.Request()})
    _diffcopy(session, "dockerfile", fswalk.Request())
    ahead = session._ahead["context"]  # type: ignore[index]
    session.stop_listing_ahead()
    assert ahead.entries() is None and session._ahead == {}
    assert len(ahead._found) < 5050  # it stopped walking (a whole walk takes tens of milliseconds)
    assert len(_diffcopy(session, "context", fswalk.Request()).stats) == 5050  # listed when asked
    assert session.listed_ahead == 0


def test_a_listing_ahead_that_failed_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk that ended early (an error in the middle) or could not start (a pattern Docker
    rejects) is not an answer: the request is listed when asked, and fails as it would."""
    from invoke_compimg.engine.control import session as control_session

    _tree(tmp_path, {f"f{i}": "" for i in range(10)})

    def session(request: fswalk.Request) -> Any:
        return control_session.Session(dirs=[fswalk.Dir("context", str(tmp_path)), fswalk.Dir("dockerfile", None)],
                                       expected={"context": request})

    def breaking(directory: fswalk.Dir, request: fswalk.Request) -> Iterator[fswalk.Entry]:
        for number, entry in enumerate(fswalk.walking(directory, request)):
            if number == 3:
                raise RuntimeError("the walk broke")
            yield entry

    monkeypatch.setattr(control_session, "walking", breaking)
    broken = session(fswalk.Request())
    _diffcopy(broken, "dockerfile", fswalk.Request())
    assert len(_diffcopy(broken, "context", fswalk.Request()).stats) == 10 and broken.listed_ahead == 0
    monkeypatch.undo()
    bad = fswalk.Request(exclude=["[unclosed"])
    rejected = session(bad)
    _diffcopy(rejected, "dockerfile", fswalk.Request())
    with pytest.raises(AssertionError, match="aborted: dir 'context'"):
        _diffcopy(rejected, "context", bad)


# --- FileSend: a local export into the user's folder ---------------------------------------


def _stat(path: str, mode: int, **more: object) -> Packet:
    return Packet(type=Packet.PACKET_STAT, stat=fsutil_pb2.Stat(path=path, mode=mode, **more))  # type: ignore[arg-type]


def _export(packets_before_data: list[Packet], contents: dict[int, bytes], dest: Path, *,
            cut_short: bool = False, at_fin: list[list[str]] | None = None) -> list[Packet]:
    """Play the daemon: send stats, answer REQs from `contents`, FIN. `at_fin` gets what
    `dest` holds when our FIN comes (the daemon ends the solve on it)."""
    requests: list[int] = []
    answers: list[Packet] = []
    done = threading.Event()
    wanted = sum(1 for p in packets_before_data  # regular files, not hard links: each gets a REQ
                 if p.HasField("stat") and not p.stat.mode & (DIR | fswalk.GO_SYMLINK | fswalk.GO_TYPE)
                 and not p.stat.linkname)

    def incoming() -> Iterator[Packet]:
        yield from packets_before_data
        yield Packet(type=Packet.PACKET_STAT)
        deadline = time.monotonic() + 5
        while len(requests) < wanted and time.monotonic() < deadline:  # the REQs, however slow the machine
            time.sleep(0.005)
        for packet_id in list(requests):
            data = contents.get(packet_id, b"")
            if data:
                yield Packet(type=Packet.PACKET_DATA, ID=packet_id, data=data)
            if cut_short:
                return  # the stream breaks mid-file
            yield Packet(type=Packet.PACKET_DATA, ID=packet_id)
        done.wait(5)
        yield Packet(type=Packet.PACKET_FIN)

    for message in receive_into((p.SerializeToString() for p in incoming()), dest, "the export"):
        packet = Packet.FromString(message)
        answers.append(packet)
        if packet.type == Packet.PACKET_REQ:
            requests.append(packet.ID)
        elif packet.type == Packet.PACKET_FIN:
            if at_fin is not None:
                at_fin.append(sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                                     if not p.relative_to(dest).parts[0].startswith(".compimg-staging-")))
            done.set()
    return answers


DIR = 1 << 31


def test_local_export_merges_into_the_folder(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "bin").mkdir(parents=True)
    (dest / "bin" / "mine").write_text("the user's")
    (dest / "bin" / "app").write_text("old app")
    stats = [_stat("bin", DIR | 0o755), _stat("bin/app", 0o4755, modTime=1_000_000_000_000_000_000),
             _stat("bin/tool", 0o644), _stat("link", (1 << 27) | 0o777, linkname="bin/app")]
    at_fin: list[list[str]] = []
    answers = _export(stats, {1: b"new app", 2: b"tool"}, dest, at_fin=at_fin)
    assert answers[-1].type == Packet.PACKET_FIN
    assert at_fin == [["bin", "bin/app", "bin/mine", "bin/tool", "link"]]  # in place before FIN
    assert (dest / "bin" / "mine").read_text() == "the user's"  # merged, not replaced
    assert (dest / "bin" / "app").read_text() == "new app"
    assert stat.S_IMODE((dest / "bin" / "app").stat().st_mode) == 0o755  # no setuid
    assert (dest / "bin" / "app").stat().st_mtime == 1_000_000_000
    assert os.readlink(dest / "link") == "bin/app"
    assert sorted(os.listdir(dest)) == ["bin", "link"]  # no staging folder left


@pytest.mark.parametrize(("stats", "why"), [
    ([_stat("../evil", 0o644)], "not a clean relative path"),
    ([_stat("/etc/evil", 0o644)], "not a clean relative path"),
    ([_stat("a/./b", 0o644)], "not a clean relative path"),
    ([_stat("lonely/file", 0o644)], "before its folder"),
    ([_stat("abs", (1 << 27) | 0o777, linkname="/etc/passwd")], "absolute path"),
    ([_stat("d", DIR | 0o755), _stat("d/up", (1 << 27) | 0o777, linkname="../../x")], "outside the destination"),
    ([_stat("hard", 0o644, linkname="../x")], "not a clean relative path"),
    # each link alone stays inside; followed through each other they lead out
    ([_stat("x", DIR | 0o755), _stat("x/s", (1 << 27) | 0o777, linkname=".."),
      _stat("y", (1 << 27) | 0o777, linkname="x/s/.."), _stat("y2", (1 << 27) | 0o777, linkname="y/..")],
     "through other links"),
    # a link made before the link it passes through
    ([_stat("a", (1 << 27) | 0o777, linkname="d/s/.."), _stat("d", DIR | 0o755),
      _stat("d/s", (1 << 27) | 0o777, linkname="..")], "through other links"),
    # a hard link's path through a link: only a file received by that very name may be linked
    ([_stat("x", DIR | 0o755), _stat("x/s", (1 << 27) | 0o777, linkname=".."),
      _stat("leak", 0o600, linkname="x/s/keep")], "which was not sent"),
    ([_stat("d", DIR | 0o755), _stat("hard", 0o644, linkname="d")], "which was not sent"),
])
def test_local_export_refuses_what_would_leave_the_folder(tmp_path: Path, stats: list[Packet], why: str) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(ExportRefused, match=why):
        _export(stats, {}, dest)
    assert sorted(os.listdir(dest)) == ["keep"]
    assert not (tmp_path / "evil").exists()


def test_local_export_follows_links_inside_and_stops_at_loops(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    stats = [_stat("bin", DIR | 0o755), _stat("bin/app", 0o755), _stat("bin/up", (1 << 27) | 0o777, linkname=".."),
             _stat("again", (1 << 27) | 0o777, linkname="bin/up/bin/app"), _stat("hard", 0o755, linkname="bin/app"),
             _stat("loop1", (1 << 27) | 0o777, linkname="loop2"), _stat("loop2", (1 << 27) | 0o777, linkname="loop1")]
    _export(stats, {1: b"app"}, dest)
    assert (dest / "again").read_text() == "app"
    assert (dest / "hard").stat().st_ino == (dest / "bin" / "app").stat().st_ino
    assert os.readlink(dest / "loop1") == "loop2"


@pytest.mark.parametrize(("mine", "theirs", "why"), [
    ("folder", "file", "replace the folder 'app' with a file"),
    ("file", "folder", "replace the file 'app' with a folder"),
])
def test_local_export_never_replaces_a_folder_with_a_file_or_back(tmp_path: Path, mine: str, theirs: str,
                                                                  why: str) -> None:
    """`docker cp` refuses both; replacing would lose the folder's files with the staging folder."""
    dest = tmp_path / "out"
    dest.mkdir()
    if mine == "folder":
        (dest / "app").mkdir()
        (dest / "app" / "notes.txt").write_text("mine")
    else:
        (dest / "app").write_text("mine")
    (dest / "other").write_text("old")
    stats = [_stat("other", 0o644)] + ([_stat("app", 0o755)] if theirs == "file" else
                                         [_stat("app", DIR | 0o755), _stat("app/x", 0o644)])
    with pytest.raises(ExportRefused, match=why):
        _export(stats, {0: b"new", 1: b"app", 2: b"x"}, dest)
    assert (dest / "other").read_text() == "old"  # nothing moved in
    assert ((dest / "app" / "notes.txt") if mine == "folder" else (dest / "app")).read_text() == "mine"
    assert sorted(os.listdir(dest)) == ["app", "other"]


def test_local_export_leaves_out_devices_and_never_writes_through_a_link(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)  # a link of the user's where the export has a folder
    stats = [_stat("null", (1 << 26) | (1 << 21) | 0o666, devmajor=1, devminor=3), _stat("pipe", (1 << 25) | 0o644),
             _stat("sub", DIR | 0o755), _stat("sub/file", 0o644)]
    _export(stats, {3: b"data"}, dest)
    assert sorted(os.listdir(dest)) == ["sub"]
    assert (dest / "sub").is_dir() and not (dest / "sub").is_symlink()
    assert (dest / "sub" / "file").read_text() == "data"
    assert os.listdir(elsewhere) == []


def test_an_interrupted_local_export_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "app").write_text("old")
    with pytest.raises(ExportRefused, match="ended before it was complete"):
        _export([_stat("app", 0o755), _stat("other", 0o644)], {0: b"half of the new app"}, dest, cut_short=True)
    assert (dest / "app").read_text() == "old"
    assert sorted(os.listdir(dest)) == ["app"]


def test_a_tar_export_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "image.tar"

    def broken() -> Iterator[bytes]:
        yield b"x" * 1000
        raise ConnectionError("lost the daemon")

    with pytest.raises(ConnectionError):
        TarFile(target).receive(broken())
    assert os.listdir(tmp_path) == []
    killed = tmp_path / ".compimg-staging-999999999-abcd.tar"  # a tar export's, of a run killed mid-write
    killed.write_bytes(b"half")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportRefused, match=r"cannot write the export to .*folder \(Is a directory\); nothing"):
        TarFile(tmp_path / "folder").receive(iter([b"x"]))
    (tmp_path / "folder").rmdir()
    assert not killed.exists()
    assert TarFile(target).receive(iter([b"a" * 10, b"b" * 5])) == 15
    assert target.read_bytes() == b"a" * 10 + b"b" * 5
    assert os.listdir(tmp_path) == ["image.tar"]


# --- registry credentials ------------------------------------------------------------------


def test_credentials_only_for_the_host_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import json

    from invoke_compimg.engine.control.providers import Credentials, Registries, docker_credentials

    config = {"auths": {
        "registry.example:5000": {"auth": base64.b64encode(b"alice:pw-a").decode()},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"bob:pw-hub").decode()},
        "tokens.example": {"identitytoken": "tok-1"}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_credentials("registry.example:5000") == Credentials("alice", "pw-a")
    assert docker_credentials("registry-1.docker.io") == Credentials("bob", "pw-hub")  # Docker Hub's key
    assert docker_credentials("tokens.example") == Credentials("", "tok-1")
    assert docker_credentials("elsewhere.example") == Credentials()
    asked: list[str] = []

    def lookup(host: str) -> Credentials:
        asked.append(host)
        return Credentials("u", "p")

    only = Registries(lookup, hosts=["registry.example:5000"])
    assert only.credentials("other.example") == Credentials() and asked == []
    assert only.credentials("registry.example:5000") == Credentials("u", "p") and asked == ["registry.example:5000"]


def test_an_engine_without_the_grpc_api_is_one_line() -> None:
    """An engine (or proxy) that does not switch protocols on POST /grpc, e.g. Podman."""
    import http.server
    import socketserver

    from invoke_compimg.engine.client import Engine
    from invoke_compimg.engine.control.transport import upgrade
    from invoke_compimg.errors import EngineError

    class NoGrpc(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # /version: an engine of some kind
            body = b'{"ApiVersion": "1.41", "Version": "0.0", "Os": "linux"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = b'{"message":"page not found"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), NoGrpc) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            engine = Engine({"DOCKER_HOST": f"tcp://127.0.0.1:{server.server_address[1]}"})
            with pytest.raises(EngineError, match=r"does not serve POST /grpc \(it answered 404"):
                upgrade(engine)
        finally:
            server.shutdown()


def test_socket_folders_fit_a_socket_path_and_those_of_killed_runs_go(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A TMPDIR too long for a unix socket's path (107 bytes) gives way to /tmp; a folder of a
    process that is gone is removed by the next run, one of a live process stays."""
    import tempfile

    from invoke_compimg.procs import socket_folder

    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    folder = socket_folder("test")
    try:
        assert os.path.dirname(folder) == "/tmp" and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert os.path.basename(folder).startswith(f"compimg-test-{os.getpid()}-")
    finally:
        os.rmdir(folder)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "compimg-test-999999999-abcd"
    dead.mkdir()
    (dead / "old.sock").write_text("")
    live = tmp_path / f"compimg-test-{os.getpid()}-live"
    live.mkdir()
    folder = socket_folder("test")
    assert not dead.exists() and live.exists() and os.path.dirname(folder) == str(tmp_path)


def test_the_control_client_leaves_what_serves_a_session_to_the_solve() -> None:
    """A solve's request needs only the client; the session's side (the walk, the providers,
    the h2 server), the status decoder and the protobuf runtime (the solve's messages are
    written by hand) are imported once the solve is on its way."""
    import subprocess
    import sys

    code = ("import sys, invoke_compimg.engine.control.client\n"
            "print(sorted(m for m in ('invoke_compimg.engine.control.session', 'invoke_compimg.engine.control.fswalk',"
            " 'invoke_compimg.engine.control.h2_server', 'invoke_compimg.engine.buildkit.wire', 'google.protobuf',"
            " 'invoke_compimg.engine.control.proto.control_pb2') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stderr
