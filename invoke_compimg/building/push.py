"""`--push`: publish what this run built, never an older image that a name still holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..engine import images
from ..errors import UserError
from ..progress import Reporter

if TYPE_CHECKING:
    from ..engine.client import Engine


def plan(tags: Mapping[str, Sequence[str]], built: Mapping[str, str], target: str,
         all_stages: bool, skipped: Callable[[str], None] | None = None) -> list[tuple[str, str, str]]:
    """(stage, ref, image ID) to push: the target's refs, and with `all_stages` the refs of
    the other stages this run built or found up to date. A ref is pushed only from the image
    this run made for its stage, never from whatever image the name holds. Every other ref
    is one line to `skipped` (a warning), never dropped in silence; without `skipped`, a ref
    of a stage this run did not build is refused (UserError)."""
    chosen = []
    for stage, refs in tags.items():
        names = ", ".join(refs)
        if stage not in built:
            message = (f"--push: not pushing {names}: stage '{stage}' is not part of this build of "
                       f"'{target}', so the tag may name an old image; build --target {stage} to push it")
            if skipped is None:
                raise UserError(message)
            skipped(message)
        elif stage != target and not all_stages:
            if skipped is not None:
                skipped(f"--push: not pushing {names} (stage '{stage}'): only the target's tags are "
                        "pushed; add --push-all to push the stages it needs too")
        else:
            chosen += [(stage, ref, built[stage]) for ref in refs]
    return chosen


def push(engine: Engine, refs: Sequence[tuple[str, str, str]], reporter: Reporter,
         *, layers: bool) -> list[tuple[str, str]]:
    """Push each ref, checking first that it still names the image this run made (another
    run may have moved it since). One line per ref with its digest; per-layer progress
    only when `layers` (a terminal). Returns (ref, digest)."""
    pushed = []
    for stage, ref, image_id in refs:
        if images.image_id_of(engine, ref) != image_id:
            raise UserError(f"--push: {ref} no longer names the image this run built for stage "
                            f"'{stage}' (another build moved it); run the build again")

        def show(line: str, stage: str = stage) -> None:
            if layers:
                reporter.note(line, stage)

        reporter.note(f"pushing {ref}", stage)
        digest = images.push(engine, ref, show)
        reporter.note(f"pushed {ref}@{digest}" if digest else f"pushed {ref}", stage)
        pushed.append((ref, digest))
    return pushed
