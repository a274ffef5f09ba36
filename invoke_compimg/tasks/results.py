"""Machine-readable results of a build, as docker and buildx write them: `--iidfile` (the
target's image ID) and `--metadata-file` (a JSON object of what was built). Both are
written only when the build succeeded, and atomically: a reader never sees half a file,
and a failed build leaves an earlier file as it was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..progress import StageResult


def metadata(rows: Sequence[StageResult], names: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """{stage: its result}, one entry per stage built, as `docker buildx bake --metadata-file`
    writes one per target. buildx's key names where they fit (`containerimage.config.digest`
    is the image ID, which is what a local engine has; `image.name` the names, comma-separated),
    ours under `compimg.`. A stage that BuildKit built inside another's solve has no image of
    its own, so no digest and no names."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry: dict[str, Any] = {}
        if row.image_id:
            entry["containerimage.config.digest"] = row.image_id
            entry["image.name"] = ",".join(names.get(row.stage, ()))
        entry["compimg.builder"] = row.builder
        entry["compimg.seconds"] = round(row.seconds, 3)
        entry["compimg.reused"] = row.outcome != "built"
        entry["compimg.outcome"] = row.outcome
        found[row.stage] = entry
    return found


def write_atomically(path: str | Path, text: str) -> None:
    """`text` into `path` through a temporary file in the same folder and a rename."""
    target = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write(iidfile: str | None, metadata_file: str | None, image_id: str, rows: Sequence[StageResult],
          names: Mapping[str, Sequence[str]]) -> None:
    if iidfile:
        write_atomically(iidfile, image_id)  # as docker build --iidfile: the ID, no newline
    if metadata_file:
        write_atomically(metadata_file, json.dumps(metadata(rows, names), indent=2) + "\n")


def check_writable(flag: str, path: str | None) -> None:
    """A file we could not write after a long build is a late surprise: say so first."""
    from ..errors import UserError

    if path and not Path(path).resolve().parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {Path(path).resolve().parent} does not exist; create it "
                        "or give another path")
