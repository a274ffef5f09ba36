"""The scheduler with a fake builder: ordering, --jobs, stop after failure. No engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import pytest

from invoke_compimg.building import scheduler

GRAPH = {"a": [], "b": [], "c": ["a", "b"], "d": ["c"], "e": ["a"]}


class Fake:
    """Builds a unit in `delay` seconds; records start/end and what it knew."""

    def __init__(self, delay: float = 0.05, fail: str | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.log: list[tuple[str, str, float]] = []
        self.known: dict[str, set[str]] = {}
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, unit: str, known: Mapping[str, str], ready: Callable[[str], None]) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.log.append(("start", unit, time.monotonic()))
            self.known[unit] = set(known)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.log.append(("end", unit, time.monotonic()))
        if unit == self.fail:
            raise RuntimeError(f"{unit} broke")
        ready(f"id-{unit}")


def _run(fake: Fake, jobs: int = 4, units: list[str] | None = None) -> dict[str, str]:
    return scheduler.run(units or list(GRAPH), lambda u: GRAPH[u], fake, jobs=jobs)


def test_every_unit_after_what_it_needs_with_their_ids() -> None:
    fake = Fake()
    assert _run(fake) == {u: f"id-{u}" for u in GRAPH}
    ends = {u: t for kind, u, t in fake.log if kind == "end"}
    starts = {u: t for kind, u, t in fake.log if kind == "start"}
    for unit, needs in GRAPH.items():
        assert all(ends[n] <= starts[unit] for n in needs)
        assert set(needs) <= fake.known[unit]


def test_independent_units_overlap_up_to_jobs() -> None:
    fake = Fake(delay=0.1)
    _run(fake, jobs=4)
    assert fake.most >= 2  # a, b (and e after a) run side by side
    one = Fake(delay=0.02)
    _run(one, jobs=1)
    assert one.most == 1


def test_no_new_unit_starts_after_a_failure_and_the_first_failure_is_raised() -> None:
    fake = Fake(fail="a", delay=0.05)
    extra: list[BaseException] = []
    with pytest.raises(RuntimeError, match="a broke"):
        scheduler.run(list(GRAPH), lambda u: GRAPH[u], fake, jobs=1, on_failure=extra.append)
    started = [u for kind, u, _ in fake.log if kind == "start"]
    assert started == ["a"]  # with one job: nothing after the failure


def test_running_units_finish_and_every_failure_is_reported() -> None:
    graph = {"x": [], "y": [], "z": ["x"]}

    def build(unit: str, known: Mapping[str, str], ready: Callable[[str], None]) -> None:
        time.sleep(0.05)
        raise RuntimeError(unit)

    extra: list[BaseException] = []
    with pytest.raises(RuntimeError) as caught:
        scheduler.run(list(graph), lambda u: graph[u], build, jobs=2, on_failure=extra.append)
    assert {str(caught.value), *map(str, extra)} == {"x", "y"}  # z never started


def test_a_unit_that_gives_no_image_is_a_failure() -> None:
    with pytest.raises(RuntimeError, match="without an image"):
        scheduler.run(["a"], lambda u: [], lambda u, k, r: None, jobs=1)
