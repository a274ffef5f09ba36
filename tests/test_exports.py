"""building/exports: the record of what an `--output` wrote (no engine needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from invoke_compimg.building.exports import ExportRecord


def make(tmp_path: Path) -> tuple[Path, ExportRecord]:
    dest = tmp_path / "out"
    (dest / "sub").mkdir(parents=True)
    (dest / "app").write_bytes(b"binary")
    (dest / "sub" / "file").write_text("nested\n")
    os.symlink("app", dest / "link")
    record = ExportRecord(str(dest), "local", folder=tmp_path / "cache")
    record.remember("d1")
    return dest, record


def test_it_holds_until_the_destination_or_the_inputs_change(tmp_path: Path) -> None:
    dest, record = make(tmp_path)
    assert record.holds("d1")
    assert not record.holds("d2")  # other inputs
    (dest / "notes.txt").write_text("mine")  # an entry added
    assert not record.holds("d1")
    (dest / "notes.txt").unlink()
    record.remember("d1")
    os.chmod(dest / "sub" / "file", 0o600)  # a mode changed
    assert not record.holds("d1")
    record.remember("d1")
    (dest / "app").unlink()  # an entry removed
    assert not record.holds("d1")


def test_a_recent_file_is_compared_by_content(tmp_path: Path) -> None:
    _, record = make(tmp_path)
    data = json.loads(record.path.read_text())
    assert set(data["hashes"]) == {"app", "sub/file", "link"}  # just written: racily clean
    assert data["hashes"]["link"] == "link:app"  # a link by its target
    data["hashes"]["app"] = "0" * 64  # as if the content had changed within the same timestamp
    record.path.write_text(json.dumps(data))
    assert not record.holds("d1")
    data["at"] += 60 * 10**9  # settled long before the record: the stat alone is trusted
    record.path.write_text(json.dumps(data))
    assert record.holds("d1")


def test_a_tar_a_missing_destination_and_a_broken_record(tmp_path: Path) -> None:
    tar = tmp_path / "out.tar"
    tar.write_bytes(b"tar bytes")
    record = ExportRecord(str(tar), "tar", folder=tmp_path / "cache")
    record.remember("d1")
    assert record.holds("d1")
    tar.write_bytes(b"tar bytes, changed")
    assert not record.holds("d1")
    record.forget()
    assert not record.holds("d1") and not record.path.exists()
    gone = ExportRecord(str(tmp_path / "nowhere"), "local", folder=tmp_path / "cache")
    gone.remember("d1")
    assert not gone.holds("d1")
    record.remember("d1")
    record.path.write_text("{not json")
    assert not record.holds("d1")
