"""What we do with built images on the host: copy an artifact out, and clean up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..engine import containers, images
from ..errors import UserError
from ..names import normalise_ref, short_id
from .safe_extract import Extracted, extract

if TYPE_CHECKING:
    from ..building.project import Project
    from ..engine.client import Engine
    from ..progress import Reporter


def copy_out(engine: Engine, project: Project, stage: str, image_id: str, path: str, dest: str,
             reporter: Reporter, *, shell_task: str = "shell") -> Extracted:
    """Copy PATH of `image_id` (stage `stage`) into `dest` like `docker cp`, through a
    container that is created, never started, and always removed."""
    containers.reap_leftovers(engine, project.slug)
    spec = f"{stage}:{path}"
    with containers.stopped_container(engine, image_id, project.slug) as container:
        try:
            with containers.archive_of(engine, container, path) as archive:
                reporter.note(f"copying {spec} into {dest}")
                return extract(archive, dest, spec)
        except FileNotFoundError:
            raise missing_path(project, stage, path, shell_task) from None


def missing_path(project: Project, stage: str, path: str, shell_task: str) -> UserError:
    return UserError(f"'{path}' does not exist in stage '{stage}'; check the path with `{shell_task} {stage}`",
                     where=str(project.dockerfile), line=project.graph.stage(stage).line)


def count_entries(path: Path) -> int:
    """Files, folders and links at and under `path` (not following links)."""
    if path.is_symlink() or not path.is_dir():
        return 1 if os.path.lexists(path) else 0
    return 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


def clean(slug: str, engine: Engine, out: TextIO) -> tuple[int, int]:
    """Remove the temporary containers of project `slug` (by label; not those of a run that
    is going on) and every name in its repository, `compimg/<slug>`. Needs no Dockerfile:
    the images of one that was deleted or broken are cleaned the same. An image the user
    also tagged (e.g. `--tag my-app`) keeps that name and stays; only our names go."""
    removed = containers.reap_leftovers(engine, slug)
    return removed, _clean_repository(engine, f"compimg/{slug}", removed, out)


def clean_all(engine: Engine, out: TextIO) -> tuple[int, int]:
    """`clean` for every compimg project on the engine: each repository `compimg/*`, and the
    temporary containers with our labels of runs that are gone."""
    removed = containers.reap_leftovers(engine)
    out.write(f"removed {removed} temporary container(s) of runs that are gone\n")
    return removed, sum(_clean_repository(engine, repository, None, out) for repository in _repositories(engine))


def _repositories(engine: Engine) -> list[str]:
    with engine.errors("listing images"):
        found = engine.api.images()
    refs = {normalise_ref(tag) for image in found for tag in image.get("RepoTags") or []}
    return sorted({ref.rpartition(":")[0] for ref in refs if ref.startswith("compimg/")})


def _clean_repository(engine: Engine, repository: str, removed: int | None, out: TextIO) -> int:
    tags = images.tags_in_repository(engine, repository)
    for _, tag in tags:
        images.untag(engine, tag)
    made = {image_id for image_id, _ in tags}
    kept = {i: found.get("RepoTags") or [] for i in made if (found := images.inspect(engine, i)) is not None}
    what = f"{len(made) - len(kept)} image(s) of {repository}"
    out.write(f"removed {removed} container(s) and {what}\n" if removed is not None else f"removed {what}\n")
    for image_id, names in sorted(kept.items()):
        # A name of ours stays on an image a container uses (the engine keeps an image's last name then)
        yours = [normalise_ref(n) for n in names if not normalise_ref(n).startswith(repository + ":")]
        held = f"still named {', '.join(yours)}" if yours else "still used by another image or container"
        out.write(f"untagged {short_id(image_id)}, kept: {held}\n")
    return len(made) - len(kept)
