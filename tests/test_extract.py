"""The extractor against crafted tar streams: everything an untrusted image could hold."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from invoke_compimg.errors import UserError
from invoke_compimg.host.safe_extract import extract
from invoke_compimg.placing import STAGING_PREFIX


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _entry(name: str, kind: bytes, link: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, None


def _extract(data: bytes, dest: Path) -> object:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        return extract(archive, dest, "test:/artifact")


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, os.readlink(p) if p.is_symlink() else "")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "dest"
    folder.mkdir()
    (folder / "kept").write_text("was here before\n")
    return folder


HOSTILE = {
    "absolute-name": (_file("/etc/evil"),),
    "climbing-name": (_file("a/../../evil"),),
    "absolute-symlink": (_entry("link", tarfile.SYMTYPE, "/etc/passwd"),),
    "climbing-symlink": (_entry("a", tarfile.DIRTYPE), _entry("a/up", tarfile.SYMTYPE, "../../outside")),
    "symlink-dir-then-entry": (_entry("d", tarfile.SYMTYPE, "../.."), _file("d/evil")),
    "hardlink-outside": (_entry("h", tarfile.LNKTYPE, "../../etc/passwd"),),
    "hardlink-absolute": (_entry("h", tarfile.LNKTYPE, "/etc/passwd"),),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_destination_unchanged(case: str, dest: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path)
    with pytest.raises(UserError) as caught:
        _extract(_tar(_file("fine", b"ok"), *HOSTILE[case]), dest)
    assert "refusing to extract test:/artifact" in str(caught.value) and caught.value.code == 1
    assert _snapshot(tmp_path) == before  # nothing written, not even "fine"; no staging left
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_hardlink_to_a_symlink_stays_inside(dest: Path) -> None:
    data = _tar(_file("real", b"data"), _entry("sym", tarfile.SYMTYPE, "real"), _entry("hard", tarfile.LNKTYPE, "sym"))
    _extract(data, dest)
    assert (dest / "hard").read_bytes() == b"data"


def test_devices_and_fifos_are_skipped(dest: Path) -> None:
    result = _extract(_tar(_entry("dev/null", tarfile.CHRTYPE), _entry("dev/sda", tarfile.BLKTYPE),
                           _entry("pipe", tarfile.FIFOTYPE), _file("ok")), dest)
    assert result.skipped == ["dev/null", "dev/sda", "pipe"]  # type: ignore[attr-defined]
    assert (dest / "ok").exists() and not (dest / "pipe").exists() and not (dest / "dev/null").exists()


def test_setuid_and_world_writable_bits_are_cleared(dest: Path) -> None:
    _extract(_tar(_file("suid", mode=0o4755), _file("sgid", mode=0o2755), _file("ww", mode=0o777),
                  _entry("sticky", tarfile.DIRTYPE, mode=0o1777)), dest)
    for name in ("suid", "sgid", "ww", "sticky"):
        mode = (dest / name).stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH), (name, oct(mode))
    assert (dest / "suid").stat().st_mode & 0o777 == 0o755


def test_long_and_non_utf8_names(dest: Path) -> None:
    long_name = "d/" + "n" * 200 + "/" + "f" * 250
    info, data = _file(long_name)
    odd = tarfile.TarInfo("caf\udce9")  # a Latin-1 byte that is not UTF-8
    odd.size = 1
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        tar.addfile(info, io.BytesIO(data))
        tar.addfile(odd, io.BytesIO(b"y"))
    _extract(buffer.getvalue(), dest)
    assert (dest / long_name).read_bytes() == b"x"
    assert os.path.exists(os.path.join(os.fsencode(dest), b"caf\xe9"))


def test_legitimate_relative_links_keep_working(dest: Path) -> None:
    _extract(_tar(_entry("app", tarfile.DIRTYPE), _entry("app/lib", tarfile.DIRTYPE),
                  _file("app/lib/libx.so.1", b"lib"),
                  _entry("app/lib/libx.so", tarfile.SYMTYPE, "libx.so.1"),
                  _entry("app/current", tarfile.SYMTYPE, "lib/libx.so")), dest)
    assert (dest / "app/current").read_bytes() == b"lib"
    assert os.readlink(dest / "app/lib/libx.so") == "libx.so.1"


def test_truncated_archive_leaves_destination_as_it_was(dest: Path, tmp_path: Path) -> None:
    data = _tar(_file("one", b"1" * 5000), _file("two", b"2" * 5000))
    before = _snapshot(tmp_path)
    with pytest.raises(UserError, match="broken archive"):
        _extract(data[:7000], dest)
    assert _snapshot(tmp_path) == before


def test_existing_entries_are_replaced_and_a_planted_symlink_is_not_followed(dest: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "out").symlink_to(outside)
    _extract(_tar(_entry("out", tarfile.DIRTYPE), _file("out/f", b"new")), dest)
    assert not (dest / "out").is_symlink() and (dest / "out/f").read_bytes() == b"new"
    assert list(outside.iterdir()) == []
    assert (dest / "kept").read_text() == "was here before\n"


def test_stale_staging_of_a_killed_run_is_removed(dest: Path) -> None:
    stale = dest / f"{STAGING_PREFIX}999999999-abc"
    stale.mkdir()
    (stale / "junk").write_text("x")
    mine = dest / f"{STAGING_PREFIX}{os.getpid()}-live"  # a live process's: left alone
    mine.mkdir()
    _extract(_tar(_file("f")), dest)
    assert not stale.exists() and mine.exists()
    mine.rmdir()


def test_a_failure_while_moving_into_place_restores_what_was_there(dest: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (dest / "a").write_text("old a\n")
    (dest / "b").mkdir()
    (dest / "b/f").write_text("old b\n")
    real_rename, calls = os.rename, []

    def failing_rename(src, dst):  # type: ignore[no-untyped-def]
        calls.append((src, dst))
        if len(calls) == 4:  # a aside, a in, b aside, then b in fails
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(UserError, match=r"No space left on device.*the destination is as it was"):
        _extract(_tar(_file("a", b"new a"), _entry("b", tarfile.DIRTYPE), _file("b/f", b"new b")), dest)
    monkeypatch.setattr(os, "rename", real_rename)
    assert (dest / "a").read_text() == "old a\n" and (dest / "b/f").read_text() == "old b\n"
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b", "kept"]


def test_a_folder_of_the_users_is_never_replaced_by_a_file(dest: Path) -> None:
    """As `docker cp`: the folder (and what is in it) stays, and nothing of the archive goes in."""
    (dest / "app").mkdir()
    (dest / "app/notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="replace the folder 'app' with a file; move it away"):
        _extract(_tar(_file("new"), _file("app", b"binary")), dest)
    assert (dest / "app/notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in dest.iterdir()) == ["app", "kept"]
    with pytest.raises(UserError, match="replace the file 'kept' with a folder"):
        _extract(_tar(_entry("kept", tarfile.DIRTYPE), _file("kept/f")), dest)
    assert (dest / "kept").read_text() == "was here before\n"
