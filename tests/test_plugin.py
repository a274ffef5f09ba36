"""Invoke wiring without an engine: task identity, pre-tasks, config precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config, Context
from invoke.executor import Executor

import invoke_compimg
from invoke_compimg.errors import UserError
from invoke_compimg.tasks.binding import Binding

TEXT = "NAME build\nFROM busybox\nNAME tool_x\nFROM busybox\nNAME run\nFROM busybox\nCOPY build:/a tool_x:/b /c/\n"


def _collection(tmp_path: Path, name: str = "compimg", sub: str = "a"):  # type: ignore[no-untyped-def]
    folder = tmp_path / sub
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text(TEXT)
    return invoke_compimg.collection(name=name, base=folder)


def test_stage_tasks_have_their_own_identity_and_exact_pre_tasks(tmp_path: Path) -> None:
    one = _collection(tmp_path, "one", "a")
    two = _collection(tmp_path, "two", "b")
    run_one, run_two = one["stage.run"], two["stage.run"]
    # Same name, same closure code: Invoke's Task.__eq__ would call these equal.
    assert run_one.name == run_two.name and run_one.body.__code__ is run_two.body.__code__
    assert run_one != run_two and len({run_one, run_two}) == 2
    assert run_one.pre == [one["stage.build"], one["stage.tool-x"]]
    assert one["stage.build"].pre == []
    # The executor keeps both stage tasks of both collections.
    from invoke import Collection

    root = Collection()
    root.add_collection(one)
    root.add_collection(two)
    executor = Executor(root)
    calls = executor.dedupe(executor.expand_calls([run_one, run_two]))
    assert [c.task for c in calls] == [one["stage.build"], one["stage.tool-x"], run_one,
                                       two["stage.build"], two["stage.tool-x"], run_two]


def test_config_precedence(tmp_path: Path) -> None:
    collection = _collection(tmp_path)
    bound = Binding.of("a/Dockerfile", "a", root=tmp_path)
    config = Config(defaults=collection.configuration())
    config.compimg.tags = {"build": "from-config", "run": ["r1", "r2"]}
    config.compimg.build_args = {"A": "config", "B": "config"}
    config.compimg.no_cache = True
    c = Context(config=config)
    settings = bound.settings(c, target="run", tags=["build=from-flag"], build_args=["B=flag"])
    assert settings.tags == {"build": ("from-flag",), "run": ("r1", "r2")}
    assert settings.build_args == {"A": "config", "B": "flag"}
    assert settings.no_cache is True
    assert bound.settings(c, target="run", no_cache=False).no_cache is False
    fresh = Context(config=Config(defaults=collection.configuration()))
    assert bound.settings(fresh, target="run").jobs == 4


@pytest.mark.parametrize("bad", ["nope=ref", "build=UPPER", "build=a b"])
def test_bad_tags_are_one_line(tmp_path: Path, bad: str) -> None:
    collection = _collection(tmp_path)
    c = Context(config=Config(defaults=collection.configuration()))
    with pytest.raises(UserError) as caught:
        Binding.of("a/Dockerfile", "a", root=tmp_path).settings(c, target="run", tags=[bad])
    assert "\n" not in str(caught.value) and caught.value.code == 1


def test_an_error_leaving_an_operation_is_an_invoke_exit_and_ours(tmp_path: Path) -> None:
    """The layers below the glue know nothing of Invoke; what the API raises is both."""
    from invoke.exceptions import Exit

    from invoke_compimg.errors import UserError as Plain

    collection = _collection(tmp_path)
    c = Context(config=Config(defaults=collection.configuration()))
    with pytest.raises(Exit) as caught:
        invoke_compimg.build(c, target="nope", dockerfile=tmp_path / "a/Dockerfile", context=tmp_path / "a")
    assert isinstance(caught.value, Plain) and isinstance(caught.value, UserError)
    assert caught.value.code == 1 and "unknown stage 'nope'" in caught.value.message
    assert not isinstance(Plain("x"), Exit)
