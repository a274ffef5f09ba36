"""What we do with built images on the host: copy an artifact out, and clean up."""

from __future__ import annotations

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
            raise UserError(f"'{path}' does not exist in stage '{stage}'; check the path with "
                            f"`{shell_task} {stage}`", where=str(project.dockerfile),
                            line=project.graph.stage(stage).line) from None


def clean(project: Project, engine: Engine, out: TextIO) -> tuple[int, int]:
    """Remove this project's temporary containers (by label; not those of a run that is
    going on) and every name in its own repository. An image the user also tagged (e.g.
    `--tag my-app`) keeps that name and stays; only our names go."""
    removed = containers.reap_leftovers(engine, project.slug)
    tags = images.tags_in_repository(engine, project.repository)
    for _, tag in tags:
        images.untag(engine, tag)
    made = {image_id for image_id, _ in tags}
    kept = {i: found.get("RepoTags") or [] for i in made if (found := images.inspect(engine, i)) is not None}
    out.write(f"removed {removed} container(s) and {len(made) - len(kept)} image(s) of {project.repository}\n")
    for image_id, names in sorted(kept.items()):
        held = (f"still named {', '.join(normalise_ref(n) for n in names)}" if names
                else "still used by another image or container")
        out.write(f"untagged {short_id(image_id)}, kept: {held}\n")
    return removed, len(made) - len(kept)
