"""What we do with built images on the host: copy an artifact out, and clean up."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from ..engine import client as engine
from ..errors import UserError
from ..names import normalise_ref, short_id
from .safe_extract import Extracted, extract

if TYPE_CHECKING:
    import docker

    from ..building.project import Project
    from ..progress import Reporter


def copy_out(api: docker.APIClient, project: Project, stage: str, image_id: str, path: str, dest: str,
             reporter: Reporter, *, shell_task: str = "shell") -> Extracted:
    """Copy PATH of `image_id` (stage `stage`) into `dest` like `docker cp`, through a
    container that is created, never started, and always removed."""
    engine.reap_leftovers(api, project.slug)
    spec = f"{stage}:{path}"
    with engine.stopped_container(api, image_id, project.slug) as container:
        try:
            with engine.archive_of(api, container, path) as chunks:
                reporter.note(f"copying {spec} into {dest}")
                with engine.engine_errors(f"copying {spec}"), engine.open_tar_stream(chunks) as archive:
                    return extract(archive, dest, spec)
        except FileNotFoundError:
            raise UserError(f"'{path}' does not exist in stage '{stage}'; check the path with "
                            f"`{shell_task} {stage}`", where=str(project.dockerfile),
                            line=project.graph.stage(stage).line) from None


def clean(project: Project, api: docker.APIClient, out: TextIO) -> tuple[int, int]:
    """Remove this project's temporary containers (by label; not those of a run that is
    going on) and every name in its own repository. An image the user also tagged (e.g.
    `--tag my-app`) keeps that name and stays; only our names go."""
    containers = engine.reap_leftovers(api, project.slug)
    tags = engine.tags_in_repository(api, project.repository)
    for _, tag in tags:
        engine.untag(api, tag)
    images = {image_id for image_id, _ in tags}
    kept = {i: found.get("RepoTags") or [] for i in images if (found := engine.inspect(api, i)) is not None}
    out.write(f"removed {containers} container(s) and {len(images) - len(kept)} image(s) of {project.repository}\n")
    for image_id, names in sorted(kept.items()):
        held = (f"still named {', '.join(normalise_ref(n) for n in names)}" if names
                else "still used by another image or container")
        out.write(f"untagged {short_id(image_id)}, kept: {held}\n")
    return containers, len(images) - len(kept)
