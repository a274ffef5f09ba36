"""Which context paths a stage's sources read (no engine)."""

from __future__ import annotations

from pathlib import Path

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
