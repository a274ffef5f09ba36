"""Run units of work (stages, or whole targets) as soon as what they need is done.

Knows nothing of Docker: `build_one(unit, known, ready)` builds one unit given the image
IDs of the units it needs (`known`) and calls `ready(image_id)` the moment its own image
exists, so that dependents start before it is named, measured or pushed. Tested with a
fake builder (tests/test_scheduler.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

U = TypeVar("U", bound=Hashable)
BuildOne = Callable[[U, Mapping[U, str], Callable[[str], None]], object]


def run(units: Sequence[U], needs: Callable[[U], Sequence[U]], build_one: BuildOne[U], *,
        jobs: int, on_failure: Callable[[BaseException], None] | None = None) -> dict[U, str]:
    """Build `units` (in an order where each comes after what it `needs`), at most `jobs`
    at a time; return {unit: image ID}. After a failure no new unit starts, the running
    ones finish, every failure after the first goes to `on_failure`, and the first is
    raised. Units run on daemon threads: on Ctrl-C the process must not wait for running
    builds; exiting closes their connections, and the engine cancels them."""
    pending = list(units)
    ids: dict[U, str] = {}
    active: set[U] = set()
    failures: list[BaseException] = []
    events: queue.Queue[tuple[str, U, object]] = queue.Queue()

    def work(unit: U, known: dict[U, str]) -> None:
        try:
            build_one(unit, known, lambda image_id: events.put(("image", unit, image_id)))
            events.put(("done", unit, None))
        except BaseException as exc:  # reported by the calling thread
            events.put(("failed", unit, exc))

    while pending or active:
        if not failures:
            for unit in [u for u in pending if all(d in ids for d in needs(u))]:
                if len(active) >= max(1, jobs):
                    break
                pending.remove(unit)
                active.add(unit)
                threading.Thread(target=work, args=(unit, dict(ids)), daemon=True,
                                 name=f"compimg-{getattr(unit, 'name', unit)}").start()  # not the whole repr
        if not active:
            break
        kind, unit, value = events.get()
        if kind == "image":
            ids[unit] = str(value)
        else:
            active.discard(unit)
            if kind == "failed":
                failures.append(value)  # type: ignore[arg-type]
            elif unit not in ids:
                failures.append(RuntimeError(f"{unit} finished without an image"))
    if failures:
        for extra in failures[1:]:
            if on_failure:
                on_failure(extra)
        raise failures[0]
    return ids
