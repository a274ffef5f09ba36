"""Which context paths a stage's sources read (no engine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from invoke_compimg.building.context import files_read


def test_files_read(tmp_path: Path) -> None:
    for rel in ("src/a.c", "src/b.h", "inc/x.h", "big.bin", "ignored.c", "top.c"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / ".dockerignore").write_text("ignored.c\n")
    context = str(tmp_path)
    assert files_read(context, []) == []
    assert files_read(context, ["src/*.c", "./inc"]) == ["inc", "inc/x.h", "src", "src/a.c"]
    assert files_read(context, ["*.c"]) == ["top.c"]  # `*` never crosses `/`; ignored.c is ignored
    everything = [".dockerignore", "big.bin", "inc", "inc/x.h", "src", "src/a.c", "src/b.h", "top.c"]
    assert files_read(context, ["."]) == everything
    assert files_read(context, ["$DIR/a.c"]) == everything  # cannot tell in advance: all of it


def test_a_dockerignore_that_is_not_utf8_is_read_as_bytes(tmp_path: Path) -> None:
    """Docker reads .dockerignore as bytes; a Latin-1 file must not become a traceback."""
    import tarfile

    from invoke_compimg.building.context import archive

    (tmp_path / ".dockerignore").write_bytes(b"caf\xe9.txt\n# \xff comment\n")
    (tmp_path / "caf\udce9.txt".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")).write_text("x")
    (tmp_path / "kept.txt").write_text("k")
    paths = files_read(str(tmp_path), ["."])
    assert "kept.txt" in paths
    with archive(str(tmp_path), "FROM busybox\n", paths) as tar_file, tarfile.open(fileobj=tar_file) as tar:
        assert "kept.txt" in tar.getnames()
        ignore = tar.extractfile(".dockerignore").read()  # type: ignore[union-attr]
        assert ignore.startswith(b"caf\xe9.txt\n")


def _age(path, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    import time

    past = time.time() - seconds
    os.utime(path, (past, past))


def test_file_hashes_are_remembered_and_never_wrong(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An unchanged file is not read again; a changed one always is, even with its times put back."""
    from invoke_compimg.building.context import fingerprint
    from invoke_compimg.building.file_hashes import FileHashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "a.txt").write_text("one")
    (context / "b.txt").write_text("two")
    for name in ("a.txt", "b.txt"):
        _age(context / name)
    first = FileHashes(str(context))
    digest = fingerprint(str(context), ["a.txt", "b.txt"], first)
    assert first.read == 2 and first.path.is_file()
    again = FileHashes(str(context))
    assert fingerprint(str(context), ["a.txt", "b.txt"], again) == digest and again.read == 0
    # same size, times put back: the change time still moves, so it is read again
    stat = os.stat(context / "a.txt")
    (context / "a.txt").write_text("ONE")
    os.utime(context / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = FileHashes(str(context))
    assert fingerprint(str(context), ["a.txt", "b.txt"], changed) != digest and changed.read == 1


def test_file_hashes_saved_meanwhile_are_there_once_the_process_ends(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A build's record is written on a thread of its own while the request goes out; a
    process ending waits for that thread (it is not a daemon), so the next run reads nothing."""
    import subprocess
    import sys

    from invoke_compimg.building.context import fingerprint
    from invoke_compimg.building.file_hashes import FileHashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for i in range(300):
        (tmp_path / f"f{i}").write_text(str(i))
        _age(tmp_path / f"f{i}")
    names = [f"f{i}" for i in range(300)]
    code = ("import sys, time\nfrom invoke_compimg.building import context, file_hashes\n"
            "write = file_hashes.write_json\n"  # slow: the process ends long before the record is written
            "file_hashes.write_json = lambda *a: (time.sleep(0.5), write(*a))\n"
            "print(context.fingerprint(sys.argv[1], sys.argv[2:], save_soon=True))")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path), *names], capture_output=True, text=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    again = FileHashes(str(tmp_path))
    assert fingerprint(str(tmp_path), names, again) == run.stdout.strip() and again.read == 0


def test_a_file_changed_just_now_is_not_remembered(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """git's racy-clean rule: within the timestamp granularity a second write could keep the times."""
    from invoke_compimg.building.context import fingerprint
    from invoke_compimg.building.file_hashes import FileHashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "fresh.txt").write_text("new")
    fingerprint(str(tmp_path), ["fresh.txt"], FileHashes(str(tmp_path)))
    later = FileHashes(str(tmp_path))
    fingerprint(str(tmp_path), ["fresh.txt"], later)
    assert later.read == 1


def test_a_damaged_or_missing_hash_cache_is_only_slower(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from invoke_compimg.building.context import fingerprint
    from invoke_compimg.building.file_hashes import FileHashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "f").write_text("x")
    _age(tmp_path / "f")
    hashes = FileHashes(str(tmp_path))
    digest = fingerprint(str(tmp_path), ["f"], hashes)
    hashes.path.write_text("{not json")
    assert fingerprint(str(tmp_path), ["f"], FileHashes(str(tmp_path))) == digest
    hashes.path.unlink()
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/nowhere")  # cannot be written: no error
    assert fingerprint(str(tmp_path), ["f"], FileHashes(str(tmp_path))) == digest


@pytest.mark.parametrize("ignore, kept", [
    ("*\n!keep/**\n", {"keep", "keep/a.txt", "keep/sub", "keep/sub/b.txt", "keep/sub/c.log"}),
    ("**/*.log\n", {"keep", "keep/a.txt", "keep/sub", "keep/sub/b.txt", "top.txt", ".dockerignore"}),
    ("keep\n!keep/sub/b.txt\n", {"keep/sub/b.txt", "top.txt", "x.log", ".dockerignore"}),
    (".*\n", {"keep", "keep/a.txt", "keep/sub", "keep/sub/b.txt", "keep/sub/c.log", "top.txt", "x.log"}),
])
def test_dockerignore_as_docker_reads_it(tmp_path, ignore: str, kept: set[str]) -> None:  # type: ignore[no-untyped-def]
    """`**`, `!` exceptions inside an excluded folder, and `*` matching dot files (Go's rules)."""
    from invoke_compimg.building.context import files_read

    for name in ("keep/a.txt", "keep/sub/b.txt", "keep/sub/c.log", "top.txt", "x.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".dockerignore").write_text(ignore)
    found = set(files_read(str(tmp_path), ["."]))
    assert {p for p in found if not os.path.isdir(tmp_path / p)} == {p for p in kept if not os.path.isdir(tmp_path / p)}


def test_only_where_the_sources_can_be_is_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A context's other trees (a .git, node_modules) are never listed for `COPY src /src`: each
    listing costs every build, the warm no-op too (20,000 files: 73 ms). The result is the
    whole walk's, ignore rules and exceptions on the way included."""
    for path in ("src/a.c", "src/sub/b.c", "src/skip.o", "lib/keep.h", "lib/other.h", ".git/objects/x", "top.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    (tmp_path / ".dockerignore").write_text("*.o\n**/*.o\nlib\n!lib/keep.h\n")
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert files_read(str(tmp_path), ["src"]) == ["src", "src/a.c", "src/sub", "src/sub/b.c"]
    assert files_read(str(tmp_path), ["lib/*.h"]) == ["lib", "lib/keep.h"]
    assert files_read(str(tmp_path), ["src/sub/b.c", "missing/x"]) == ["src", "src/sub", "src/sub/b.c"]
    assert not [p for p in listed if p.startswith(".git") or p == "."], listed
    listed.clear()
    assert "top.txt" in files_read(str(tmp_path), ["*.txt"])  # a wildcard at the top: the whole walk
    assert "." in listed
