"""The recorded engine itself (tests/fake_engine.py): a replay answers what the engine
answered, binds the values the code makes, and fails loudly on anything it was not recorded
answering; the recording proxy writes down what went over the wire."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fake_engine import FakeEngine, Mismatch, RecordingProxy, Scrubber

from invoke_compimg.engine import images
from invoke_compimg.errors import EngineError


def test_a_placeholder_stands_for_one_value_throughout() -> None:
    with FakeEngine("engine_calls") as fake, fake.engine() as engine:
        busybox = str(images.image_id_of(engine, "busybox"))
        images.tag(engine, busybox, "compimg-fake-first:one")  # binds {{unique}}
        with pytest.raises(EngineError, match="fake engine: the recording engine_calls has no"):
            images.tags_in_repository(engine, "compimg-fake-second")  # recorded with the same {{unique}}
        assert images.tags_in_repository(engine, "compimg-fake-first")[0][1] == "compimg-fake-first:one"
        with pytest.raises(Mismatch, match=r"unexpected request GET /v1\.41/images/json"):
            fake.verify(all_used=False)


def test_a_replay_that_leaves_recorded_requests_unasked_fails() -> None:
    with FakeEngine("engine_calls") as fake, fake.engine() as engine:
        images.image_id_of(engine, "busybox")
        with pytest.raises(Mismatch, match=r"recorded but never requested: GET /v1\.41/images/compimg-no-such-image"):
            fake.verify()


def test_the_scrubber_numbers_what_the_code_makes_in_order_of_appearance() -> None:
    scrubber = Scrubber({"host:42": "{{host}}:{{pid}}", "app-1234abcd": "{{project}}"})
    text = ("compimg-tmp-0123456789ab compimg-tmp-ba9876543210 compimg-tmp-0123456789ab host:42 "
            "compimg/app-1234abcd:run--I-c" + "f" * 39 + " compimg-" + "e" * 32)
    assert scrubber.text(text) == ("{{tmp:1}} {{tmp:2}} {{tmp:1}} {{host}}:{{pid}} "
                                   "compimg/{{project}}:run--I-{{inputs:1}} {{buildid:1}}")


@pytest.mark.engine
def test_a_recording_replays_what_the_engine_answered(tmp_path: Path) -> None:
    unique = f"compimg-fake-{uuid.uuid4().hex[:8]}"
    with RecordingProxy() as proxy, proxy.engine() as engine:
        recorded = images.inspect(engine, "busybox")
        images.tag(engine, str(recorded and recorded["Id"]), f"{unique}:one")
        images.untag(engine, f"{unique}:one")
        proxy.settle()
        proxy.save("tiny", {unique: "{{unique}}"}, data=tmp_path)
    saved = (tmp_path / "tiny.jsonl").read_text()
    assert unique not in saved and "{{unique}}" in saved
    with FakeEngine("tiny", data=tmp_path) as fake, fake.engine() as engine:
        assert images.inspect(engine, "busybox") == recorded
        images.tag(engine, str(recorded and recorded["Id"]), "compimg-fake-other:one")
        images.untag(engine, "compimg-fake-other:one")
        fake.verify()
    assert [r.method for r in fake.log] == ["GET", "GET", "POST", "DELETE"]
