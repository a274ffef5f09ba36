"""Which context paths a stage's sources read (no engine)."""

from __future__ import annotations

from pathlib import Path

from invoke_compimg.context import files_read


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
