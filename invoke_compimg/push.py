"""`--push`: publish what this run built, never an older image that a name still holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import docker

from . import engine
from .errors import UserError
from .progress import Reporter


def plan(tags: Mapping[str, Sequence[str]], built: Mapping[str, str], target: str,
         all_stages: bool) -> list[tuple[str, str, str]]:
    """(stage, ref, image ID) to push: the target's refs, and with `all_stages` the refs of
    the other stages this run built or found up to date. A ref of a stage that this run
    did not build is refused in one line, never pushed from whatever image it names."""
    chosen = []
    for stage, refs in tags.items():
        if stage != target and not all_stages:
            continue
        if stage not in built:
            raise UserError(f"--push: stage '{stage}' (tagged {', '.join(refs)}) is not part of this "
                            f"build of '{target}', so its tag may name an old image; build it "
                            "(--target) or drop the tag")
        chosen += [(stage, ref, built[stage]) for ref in refs]
    return chosen


def push(api: docker.APIClient, refs: Sequence[tuple[str, str, str]], reporter: Reporter,
         *, layers: bool) -> list[tuple[str, str]]:
    """Push each ref, checking first that it still names the image this run made (another
    run may have moved it since). One line per ref with its digest; per-layer progress
    only when `layers` (a terminal). Returns (ref, digest)."""
    pushed = []
    for stage, ref, image_id in refs:
        if engine.image_id_of(api, ref) != image_id:
            raise UserError(f"--push: {ref} no longer names the image this run built for stage "
                            f"'{stage}' (another build moved it); run the build again")

        def show(event: engine.BuildEvent, stage: str = stage) -> None:
            if layers:
                reporter.note(event.text, stage)

        reporter.note(f"pushing {ref}", stage)
        digest = engine.push(api, ref, show)
        reporter.note(f"pushed {ref}@{digest}" if digest else f"pushed {ref}", stage)
        pushed.append((ref, digest))
    return pushed
