"""The build pipeline end to end on a real engine (local stand-in images, no mocks)."""

from __future__ import annotations

import io
import re

import pytest
from conftest import ROOT
from engine_helpers import Builder, build_native, config_of, image_listing, run_image

from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.errors import EngineError, UserError

pytestmark = pytest.mark.engine

HELLO = (ROOT / "examples/hello-go/Dockerfile").read_text()
HELLO_FILES = {name: (ROOT / "examples/hello-go" / name).read_text() for name in ("main.go", "go.mod")}


def build(project, target=None, **settings):  # type: ignore[no-untyped-def]
    out = io.StringIO()
    builder = Builder(project, Settings(**settings), out=out)
    ids = builder.build(target)
    return ids, out.getvalue(), builder


def test_hello_go(make_project, api, unique, builder) -> None:  # type: ignore[no-untyped-def]
    project = make_project(HELLO, HELLO_FILES)
    ids, out, session = build(project, tags={"run": (f"{unique}:run",)})
    assert run_image(api, f"{unique}:run") == (0, "Hello, 世界\n")
    table = session.table().splitlines()
    rows = {cells[0]: cells for cells in (line.split() for line in table[1:]) if cells[0] in ("build", "run")}
    assert table[0].split() == ["stage", "image", "size", "seconds", "builder"]
    assert rows["run"][1:3] == [ids["run"][7:19], "3.8"] and rows["run"][-1] == builder
    if builder == "classic":  # an image per stage
        assert set(ids) == {"build", "run"}
        assert "[build] #3 [build 3/3] RUN go build" in out and "[run 3/4] COPY build:/go/bin/app ." in out
        assert api.inspect_image(project.local_ref("build"))["Id"] == ids["build"]
        assert rows["build"][1] == ids["build"][7:19] and rows["build"][-1] == "classic"
        assert table[-1].startswith("final image 'run': 3.8 MB; largest build stage 'build': ")
        assert table[-1].endswith("x larger)")
    else:  # one solve of both stages: an image of the target only; BuildKit counts steps, not ENV/CMD
        assert set(ids) == {"run"}
        assert "[build] #" in out and "[build 3/3] RUN go build" in out and "[run 3/3] COPY build:/go/bin/app ." in out
        # `build` was made inside the target's solve: a row with its time and no image of its own;
        # its base image's size is what it has at least, and the line compares with that.
        line = next(line for line in table if line.startswith("build "))
        golang = api.inspect_image("golang:1.19")["Size"] / 1e6
        assert re.match(rf"build\s+none \(in run's solve\)\s+>= {golang:.1f} MB\s+\d+\.\d\d.*buildkit$", line), table
        assert table[-1].startswith(f"final image 'run': 3.8 MB; largest build stage 'build': at least {golang:.1f} MB")


def test_unnamed_last_section_with_seed_tags(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    text = HELLO.replace("NAME run\n", "")
    project = make_project(text, HELLO_FILES)
    from invoke_compimg.building.settings import parse_tags

    tags = parse_tags([f"build={unique}-build", unique], project.graph.final.name, project.graph)
    ids, _, _ = build(project, tags=tags)
    assert project.graph.final.name == "stage-1"
    assert api.inspect_image(f"{unique}-build")["Id"] == ids["build"]
    assert api.inspect_image(unique)["Id"] == ids["stage-1"]
    assert run_image(api, unique)[1] == "Hello, 世界\n"


def test_copied_directory_tree(make_project, api) -> None:  # type: ignore[no-untyped-def]
    project = make_project(
        "NAME build\nFROM busybox\n"
        "RUN mkdir -p /out/a/b && echo 1 > /out/top && echo 2 > /out/a/b/deep\n"
        "NAME run\nFROM busybox\nCOPY build:/out /tree\n"
    )
    ids, _, _ = build(project)
    listing = image_listing(api, ids["run"], "tree")
    assert {n for n, e in listing.items() if e[1] == "file"} == {"tree/top", "tree/a/b/deep"}


FIDELITY = """\
NAME build
FROM busybox
RUN mkdir -p /out/sub/deeper /out/empty \\
 && echo a > /out/a.txt && echo b > /out/b.txt && echo c > /out/sub/c.bin && echo d > /out/sub/deeper/d \\
 && chmod 751 /out/sub && chmod 640 /out/a.txt && chmod 4755 /out/b.txt && chmod 700 /out/empty \\
 && ln -s a.txt /out/link && ln -s /nonexistent /out/abslink && ln /out/sub/c.bin /out/hard \\
 && chown 1000:1000 /out/a.txt && chown -R 33:44 /out/sub \\
 && touch /out/x1.log /out/x2.log

NAME run
FROM busybox
ENV A=1 B="two words"
WORKDIR /app
COPY build:/out/ /app/tree/
COPY build:/out/*.txt /app/txt/
COPY --chown=7:8 build:/out/sub /app/owned
COPY build:/out/link /app/one-link
COPY build:/out/x*.log ./context.txt /app/mixed/
COPY --from=build /out/sub/ /app/native/
EXPOSE 8080/tcp
USER 1000
LABEL org.example=yes
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"""


def test_fidelity_against_docker_build_of_the_native_file(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project(FIDELITY, {"context.txt": "from the context\n"})
    ids, _, _ = build(project)
    build_native(api, project, unique)
    ours = image_listing(api, ids["run"], "app")
    theirs = image_listing(api, unique, "app")
    print("\n".join(f"{e[0]:32} {e[1]:5} {e[2]:o} {e[3]}:{e[4]} {e[5]}" for e in sorted(ours.values())))
    assert ours == theirs
    assert len(ours) > 20
    assert ours["app/owned/c.bin"][3:5] == (7, 8)
    assert ours["app/tree/sub/c.bin"][3:5] == theirs["app/tree/sub/c.bin"][3:5]
    # Docker follows a link named as the COPY source itself; links inside a tree stay links.
    assert ours["app/one-link"][1] == "file" and ours["app/tree/link"][1] == "sym"
    assert config_of(api, ids["run"]) == config_of(api, unique)


def test_native_format_builds_the_same_hello(make_project, api, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project(HELLO, HELLO_FILES)
    ids, _, _ = build(project)
    build_native(api, project, unique)
    assert image_listing(api, ids["run"], "app") == image_listing(api, unique, "app")
    assert config_of(api, ids["run"]) == config_of(api, unique)


def test_from_an_earlier_stage_and_native_syntax(make_project, api, engine, builder) -> None:  # type: ignore[no-untyped-def]
    project = make_project(
        "FROM busybox AS base\nRUN echo base > /base\n"
        "FROM base AS tool\nRUN echo tool > /tool\n"
        "FROM busybox\nCOPY --from=tool /base /tool /got/\nCOPY --from=0 /base /again\n"
    )
    ids, _, _ = build(project)
    assert project.graph.stage("tool").base_stage
    listing = image_listing(api, ids["stage-2"])
    assert {"got/base", "got/tool", "again"} <= set(listing)
    # `tool` is a child image of `base`: clean must still remove all three.
    from invoke_compimg.host.artifacts import clean

    assert clean(project.slug, engine, io.StringIO()) == (0, 3 if builder == "classic" else 1)
    assert api.images(name=project.repository) == []  # every name of ours is gone


def test_failing_run_names_stage_and_line_and_leaves_no_container(make_project, api, builder, unique) -> None:  # type: ignore[no-untyped-def]
    project = make_project("NAME ok\nFROM busybox\nRUN true\nNAME bad\nFROM busybox\n"
                           f"RUN echo about to fail && exit 3 # {unique}\n")
    out = io.StringIO()
    with pytest.raises(EngineError) as caught:
        Builder(project, Settings(), out=out).build()
    message = str(caught.value)
    assert message.startswith(f"{project.dockerfile}:6: stage 'bad' failed at RUN echo about to fail")
    assert caught.value.code == 1
    assert ("returned a non-zero code: 3" if builder == "classic" else "exit code: 3") in message
    assert "[bad] about to fail" in out.getvalue()
    # No container of this build is left (found by the marker in its command, so the check
    # holds while anything else uses the engine).
    assert [c for c in api.containers(all=True) if unique in (c.get("Command") or "")] == []


def test_only_prerequisites_are_built(make_project, api, builder) -> None:  # type: ignore[no-untyped-def]
    project = make_project(
        "NAME a\nFROM busybox\nRUN echo a > /a\n"
        "NAME broken\nFROM busybox\nRUN exit 1\n"
        "NAME b\nFROM busybox\nCOPY a:/a /a\n"
        "NAME last\nFROM busybox\nCOPY broken:/x /x\n"
    )
    ids, out, _ = build(project, "b")
    assert set(ids) == ({"a", "b"} if builder == "classic" else {"b"}) and "[broken]" not in out
    with pytest.raises(UserError):
        build(project)  # the final stage does need the broken one


def test_extract_file_and_directory(make_project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from engine_helpers import extract_artifact

    project = make_project("NAME build\nFROM busybox\nRUN mkdir -p /out/d && echo x > /out/d/f "
                           "&& chmod 750 /out/d/f && ln -s f /out/d/rel && echo y > /out/single\n")
    builder = Builder(project, Settings(), out=io.StringIO())
    dest = tmp_path / "dest"
    assert extract_artifact(project, builder, "build:/out/single", str(dest)).names == ["single"]
    assert (dest / "single").read_text() == "y\n"
    extract_artifact(project, builder, "build:/out/d", str(dest))
    assert (dest / "d/f").read_text() == "x\n" and (dest / "d/f").stat().st_mode & 0o777 == 0o750
    assert (dest / "d/rel").is_symlink() and (dest / "d/rel").read_text() == "x\n"
    with pytest.raises(UserError, match="'/nope' does not exist in stage 'build'"):
        extract_artifact(project, builder, "build:/nope", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["d", "single"]  # no staging left


def test_hostile_artifacts(make_project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from engine_helpers import extract_artifact

    outside = tmp_path / "outside"
    outside.mkdir()
    project = make_project(
        "NAME evil\nFROM busybox\n"
        f"RUN mkdir -p /one /two/lib /three && ln -s {outside} /one/lib "
        "&& echo pwned > /two/lib/payload && ln -s ../../../../etc/passwd /three/climb\n"
    )
    builder = Builder(project, Settings(), out=io.StringIO())
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="absolute path"):
        extract_artifact(project, builder, "evil:/one/lib", str(dest))
    # Plant the link by hand, as an earlier (older, unsafe) tool might have left it.
    dest.mkdir(exist_ok=True)
    (dest / "lib").symlink_to(outside)
    extract_artifact(project, builder, "evil:/two/lib", str(dest))
    assert list(outside.iterdir()) == []  # nothing written through the planted link
    assert (dest / "lib").is_dir() and not (dest / "lib").is_symlink()
    assert (dest / "lib/payload").read_text() == "pwned\n"
    with pytest.raises(UserError, match="outside the destination"):
        extract_artifact(project, builder, "evil:/three/climb", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["lib"]


def test_copy_through_a_link_in_the_context_reads_where_it_leads(make_project, api, unique, builder) -> None:  # type: ignore[no-untyped-def]
    """`COPY link/file` and `COPY link` where `link -> real` in the context: the engine follows
    the link in the context it gets, so the minimal context must hold the link and what it
    leads to; an edit behind the link is a change of the stage's inputs."""
    dockerfile = "NAME run\nFROM busybox\nCOPY link/file /a\nCOPY link /b/\n"
    project = make_project(dockerfile, {"real/file": "one\n", "real/sub/other": "two\n", "unread": "x\n"})
    (project.context / "link").symlink_to("real")
    ids, _, _ = build(project)
    build_native(api, project, unique)
    ours, theirs = image_listing(api, ids["run"]), image_listing(api, unique)
    for path in ("a", "b", "b/file", "b/sub", "b/sub/other"):
        assert ours[path] == theirs[path]
    (project.context / "real/file").write_text("edited\n")
    ids2, out, _ = build(Project(project.dockerfile, project.context))  # a new process would read it again
    assert "(reused)" not in out and "COPY link/file /a" in out and ids2["run"] != ids["run"]
    assert run_image(api, ids2["run"], ["cat", "/a"]) == (0, "edited\n")


def test_a_context_file_that_cannot_be_read_is_one_line(make_project, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Hashing the stage's inputs reads every file it copies: a file that is unreadable (or
    removed meanwhile; as root here, unreadable has to be played) is one line at the stage."""
    from invoke_compimg.building import file_hashes

    project = make_project("NAME run\nFROM busybox\nCOPY secret.txt /\n", {"secret.txt": "x\n"})

    def refuse(self, path, stat):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(project.context / path))

    monkeypatch.setattr(file_hashes.FileHashes, "sha256", refuse)
    with pytest.raises(UserError, match=r"Dockerfile:1: stage 'run' cannot read its build context .*"
                                        r"Permission denied.*check that folder's files and permissions"):
        build(project)
