"""The recorded engine itself (tests/fake_engine.py): a replay answers what the engine
answered, binds the values the code makes, and fails loudly on anything it was not recorded
answering; the recording proxy writes down what went over the wire."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

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


# --- the gRPC half (fake_control, fake_daemon) ------------------------------------------------

def _builder(fake: FakeEngine, folder: Path) -> tuple[Any, Any]:
    import engine_scenarios

    world = engine_scenarios.World(fake.engine(), folder, fake, recording=False)
    project = world.project(engine_scenarios.FAILING, name="failing")
    builder, _ = engine_scenarios.builder_for(world, project, "buildkit")
    return world, builder


def test_a_solve_the_recording_lacks_fails_naming_it(tmp_path: Path) -> None:
    import engine_scenarios

    with FakeEngine("buildkit_errors") as fake:
        world, builder = _builder(fake, tmp_path)
        builder.settings = replace(builder.settings, no_cache=True)  # recorded without no-cache
        _, error = engine_scenarios.send(builder, "run")
        world.engine.close()
    assert "fake engine: the recording buildkit_errors has no such Solve" in str(error)
    with pytest.raises(Mismatch, match=r"unexpected gRPC call Solve \{.*'no-cache': ''"):
        fake.verify(all_used=False)


def test_a_session_that_serves_another_dockerfile_fails_naming_it(tmp_path: Path) -> None:
    import engine_scenarios

    with FakeEngine("buildkit_errors") as fake:
        world, builder = _builder(fake, tmp_path)
        engine_scenarios.send(builder, "run", text=lambda text: text + "# edited\n")
        world.engine.close()
    with pytest.raises(Mismatch, match=r"FileSync/DiffCopy \(dockerfile\): Dockerfile reads .*# edited"):
        fake.verify(all_used=False)


def test_recorded_calls_never_made_fail(tmp_path: Path) -> None:
    import engine_scenarios

    with FakeEngine("buildkit_errors") as fake:
        world, builder = _builder(fake, tmp_path)
        _, error = engine_scenarios.send(builder, "run")
        world.engine.close()
    assert "exit code: 3" in str(error)
    with pytest.raises(Mismatch) as caught:
        fake.verify()
    assert "recorded but never called: gRPC Solve (target build, exporter moby)" in str(caught.value)
    assert "recorded but never called: gRPC Session {{session:2}}" in str(caught.value)


def test_the_scrubber_numbers_refs_and_sessions_by_field_and_finds_them_in_any_text() -> None:
    from fake_control import SOLVE, Call, scrub_call

    session = "0123456789abcdef0123456789abcdef"
    call = Call(SOLVE, {"Ref": "ab" * 13, "Session": session, "ExporterAttrs": {"name": "compimg/app-1234abcd:run"}},
                error={"code": "UNKNOWN", "details": f"no active session for {session}: context deadline exceeded"})
    scrubbed = scrub_call(call, Scrubber({"app-1234abcd": "{{project}}"}))
    assert scrubbed.request == {"Ref": "{{ref:1}}", "Session": "{{session:1}}",
                                "ExporterAttrs": {"name": "compimg/{{project}}:run"}}
    assert scrubbed.error == {"code": "UNKNOWN", "details": "no active session for {{session:1}}: context deadline "
                                                            "exceeded"}


@pytest.mark.engine
def test_a_grpc_recording_replays_what_buildkit_answered(tmp_path: Path, api: Any) -> None:
    from invoke_compimg.engine.control import client

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "a.txt").write_text("alpha\n")
    (context / "unread.txt").write_text("not sent\n")
    unique = f"compimg-fake-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt && echo {unique}\n"
    key = uuid.uuid4().hex  # the shape of the builder's keys

    def solve(engine: Any) -> tuple[dict[str, str], list[Any]]:
        statuses: list[Any] = []
        session = client.dockerfile_session(context=str(context), allow=["a.txt"], dockerfile=dockerfile.encode(),
                                            shared_key=key)
        with engine.control().attach(session):
            answer = engine.control().solve(session=session, frontend_attrs=client.dockerfile_attrs(network="none"),
                                            exporter=client.Exporter.image([f"{unique}:one"]),
                                            on_status=statuses.append)
        return answer, statuses

    try:
        with RecordingProxy() as proxy:
            with proxy.engine() as engine:
                recorded, seen = solve(engine)
            proxy.settle()
            proxy.save("tiny_grpc", {unique: "{{unique}}"}, data=tmp_path)
    finally:
        api.remove_image(f"{unique}:one", force=True)
    saved = (tmp_path / "tiny_grpc.jsonl").read_text()
    assert unique not in saved and "{{unique}}" in saved and "{{ref:1}}" in saved and "{{session:1}}" in saved
    with FakeEngine("tiny_grpc", data=tmp_path) as fake:
        with fake.engine() as engine:
            replayed, shown = solve(engine)
        fake.verify()
    assert replayed == recorded and replayed["containerimage.digest"].startswith("sha256:")
    assert [s.vertexes for s in shown] == [s.vertexes for s in seen]
    files = [r.sent for r in fake.log if r.method == "CALLBACK" and r.sent.get("dir") == "context" and r.sent["files"]]
    assert [f["files"] for f in files] == [{"a.txt": "alpha\n"}]
