"""BuildKit with a session, as users run it (`compimg build --secret/--ssh/-o`, extract-artifact),
on the real engine: secrets never reach an image or a log, an ssh agent is reachable from a
RUN step, outputs land in a folder or a tar and merge into what is there, only what changed
travels, and nothing outside the context folder is ever sent."""

from __future__ import annotations

import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from engine_helpers import Builder, image_listing, run_image

from invoke_compimg.building.project import Project
from invoke_compimg.building.settings import Settings
from invoke_compimg.building.specs import OutputSpec, parse_secret

pytestmark = pytest.mark.engine


@pytest.fixture(autouse=True)
def _buildkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_COMPIMG_BUILDER", "buildkit")


def history_text(api: Any, image: str) -> str:
    return "\n".join(str(entry.get("CreatedBy")) for entry in api.history(image))


# --- secrets --------------------------------------------------------------------------------

SECRET_FILE = """\
NAME build
FROM busybox
RUN --mount=type=secret,id=token,required cat /run/secrets/token > /seen && echo {marker} > /marker
NAME run
FROM busybox
COPY build:/seen /seen
"""


def test_a_secret_reaches_the_step_and_nothing_else(make_project: Any, api: Any, unique: str,
                                                    tmp_path: Path) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    secret = tmp_path / "token.txt"
    secret.write_text(value)
    project = make_project(SECRET_FILE.format(marker=unique))
    result = cli("compimg", ["build", "--secret", f"id=token,src={secret}", "--progress", "plain",
                             "-t", f"build={unique}:build"], project.context)
    assert result.returncode == 0, result.stderr
    assert value not in result.stdout + result.stderr
    final = project.local_ref("run")
    assert run_image(api, final, ["cat", "/seen"]) == (0, value)  # the step read it (and wrote it, on purpose)
    build_image = project.local_ref("build")
    assert value not in history_text(api, build_image) and value not in str(api.inspect_image(build_image))
    listing = image_listing(api, build_image, "run")
    assert [e for e in listing.values() if e[1] != "dir"] == []  # the mount is not in a layer (its folder may be)
    # from the environment, and a changed value does not force a rebuild (BuildKit's rule)
    again = cli("compimg", ["build", "--secret", "id=token,env=MY_TOKEN"], project.context,
                {"MY_TOKEN": "another value"})
    assert again.returncode == 0, again.stderr
    assert "(reused" in again.stdout or "CACHED" in again.stdout or "inputs unchanged" in again.stdout, again.stdout


def test_a_missing_required_secret_is_one_line_at_its_step(make_project: Any, unique: str) -> None:
    project = make_project(SECRET_FILE.format(marker=unique))
    result = cli("compimg", ["build"], project.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert error.startswith(f"{project.dockerfile}:3: RUN --mount=type=secret,id=token is required"), error
    assert "--secret id=token,src=PATH" in error


@pytest.mark.parametrize("spec, message", [
    ("src=/x", "give the secret an id"),
    ("id=a,src=/nonexistent/file", "is not a file"),
    ("id=a,env=COMPIMG_SURELY_UNSET", "the environment has no COMPIMG_SURELY_UNSET"),
    ("id=a,colour=blue", "unknown key 'colour'"),
])
def test_a_secret_written_wrong_is_one_line(spec: str, message: str) -> None:
    from invoke_compimg.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_secret(spec, environ={})


# --- ssh --------------------------------------------------------------------------------------

# Lists the agent's keys over the forwarded socket (the agent protocol's REQUEST_IDENTITIES),
# with nothing but Go's standard library: the stand-in golang image has no ssh client.
AGENT_LIST = """\
package main

import (
\t"encoding/binary"
\t"fmt"
\t"io"
\t"net"
\t"os"
)

func main() {
\tconn, err := net.Dial("unix", os.Getenv("SSH_AUTH_SOCK"))
\tif err != nil {
\t\tfmt.Println("no agent:", err)
\t\tos.Exit(1)
\t}
\tconn.Write([]byte{0, 0, 0, 1, 11})
\tvar size uint32
\tbinary.Read(conn, binary.BigEndian, &size)
\tanswer := make([]byte, size)
\tio.ReadFull(conn, answer)
\tfmt.Printf("answer %d keys %d\\n", answer[0], binary.BigEndian.Uint32(answer[1:5]))
}
"""


def test_the_ssh_agent_is_reached_from_a_run_step(make_project: Any, ssh_agent: str, tmp_path: Path) -> None:
    project = make_project("NAME probe\nFROM golang:1.19\nCOPY list.go /src/\n"
                           "RUN --mount=type=ssh,required cd /src && go run list.go > /report\n"
                           "NAME out\nFROM scratch\nCOPY probe:/report /\n", {"list.go": AGENT_LIST})
    out = tmp_path / "out"
    result = cli("compimg", ["build", "--ssh", f"default={ssh_agent}", "-o", str(out), "--no-cache"],
                 project.context)
    assert result.returncode == 0, result.stderr
    assert (out / "report").read_text() == "answer 12 keys 1\n"  # SSH_AGENT_IDENTITIES_ANSWER, our one key
    missing = cli("compimg", ["build", "--ssh", "default=/nonexistent.sock"], project.context)
    assert missing.returncode == 1 and "does not exist; give an ssh agent's socket" in missing.stderr


# --- outputs ----------------------------------------------------------------------------------

OUTPUT = """\
NAME build
FROM busybox
RUN mkdir -p /out/sub && echo {word} > /out/app && echo nested > /out/sub/file && chmod 4755 /out/app
NAME artifact
FROM scratch
COPY build:/out /
"""


def test_output_to_a_folder_merges_into_what_is_there(make_project: Any, api: Any, tmp_path: Path) -> None:
    project = make_project(OUTPUT.format(word="one"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    result = cli("compimg", ["build", "--output", f"type=local,dest={out}"], project.context)
    assert result.returncode == 0, result.stderr
    assert (out / "app").read_text() == "one\n" and (out / "sub/file").read_text() == "nested\n"
    assert (out / "notes.txt").read_text() == "mine\n"  # never removed
    assert not (os.stat(out / "app").st_mode & 0o4000)  # no setuid on the host
    assert not [p for p in out.iterdir() if p.name.startswith(".compimg-")]  # no staging left
    assert api.images(name=project.repository + ":artifact") == []  # files, no image
    # the shorthand, and again with a change: written again (BuildKit's cache makes it quick)
    (project.context / "Dockerfile").write_text(OUTPUT.format(word="two"))
    again = cli("compimg", ["build", "-o", str(out)], project.context)
    assert again.returncode == 0 and (out / "app").read_text() == "two\n", again.stderr


def test_output_to_a_tar(make_project: Any, tmp_path: Path) -> None:
    project = make_project(OUTPUT.format(word="t"))
    target = tmp_path / "artifact.tar"
    result = cli("compimg", ["build", "--output", f"type=tar,dest={target}"], project.context)
    assert result.returncode == 0, result.stderr
    with tarfile.open(target) as archive:
        assert {"app", "sub/file"} <= set(archive.getnames())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".compimg-")]


def test_output_to_stdout_is_a_tar_with_the_progress_on_stderr(make_project: Any, tmp_path: Path) -> None:
    """`-o -` (and `type=tar,dest=-`) as `docker build -o - > out.tar`: the tar on stdout, the
    progress on stderr, no file or folder named `-`."""
    import io
    import subprocess

    from conftest import COMPIMG

    project = make_project(OUTPUT.format(word="s"))
    for spec in ("-", "type=tar,dest=-"):
        result = subprocess.run([*COMPIMG, "build", "--progress", "plain", "-o", spec], cwd=project.context,
                                capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
        assert result.returncode == 0, result.stderr
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
            assert {"app", "sub/file"} <= set(archive.getnames())
        assert b"exported" in result.stderr
        assert not (project.context / "-").exists()


def test_progress_whose_reader_left_does_not_stop_the_build(make_project: Any, tmp_path: Path) -> None:
    """`compimg build | head -2`: the reader leaves, the build goes on and succeeds, as docker's."""
    import subprocess

    from conftest import COMPIMG

    project = make_project(OUTPUT.format(word="p"))
    out = tmp_path / "out"
    process = subprocess.Popen([*COMPIMG, "build", "--no-cache", "--progress", "plain", "-o", str(out)],
                               cwd=project.context, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0 and err == b"", err
    assert (out / "app").read_text() == "p\n"


def test_output_is_refused_in_one_line_where_it_cannot_be(make_project: Any, tmp_path: Path) -> None:
    project = make_project(OUTPUT.format(word="x"))
    classic = cli("compimg", ["build", "-o", str(tmp_path / "o"), "--builder", "classic"], project.context)
    assert classic.returncode == 1 and classic.stderr.strip().splitlines() == [classic.stderr.strip()]
    assert "needs BuildKit with a session" in classic.stderr
    tagged = cli("compimg", ["build", "-o", str(tmp_path / "o"), "-t", "x:1"], project.context)
    assert tagged.returncode == 1 and "makes no image to tag" in tagged.stderr
    local = cli("compimg", ["build", "-o", "type=local,dest=-"], project.context)
    assert local.returncode == 1 and "files cannot go to stdout" in local.stderr
    bad = cli("compimg", ["build", "-o", "type=registry,ref=x"], project.context)
    assert bad.returncode == 1 and "type 'registry' is not supported here" in bad.stderr
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    for spec, why in ((f"type=tar,dest={tmp_path / 'folder'}", "that is a folder; give a file name"),
                      (f"type=local,dest={tmp_path / 'file'}", "that is a file, not a folder")):
        wrong = cli("compimg", ["build", "-o", spec], project.context)
        assert wrong.returncode == 1 and why in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong
    assert (tmp_path / "file").read_text() == "mine"


def test_extract_artifact_is_a_local_export_and_keeps_the_users_files(make_project: Any, api: Any,
                                                                     tmp_path: Path) -> None:
    project = make_project(OUTPUT.format(word="x"))
    dest = tmp_path / "dest"
    (dest / "out").mkdir(parents=True)
    (dest / "out" / "notes.txt").write_text("mine\n")
    containers_before = {c["Id"] for c in api.containers(all=True, filters={"label": "compimg.temporary"})}
    result = cli("compimg", ["extract-artifact", "build:/out", "--dest", str(dest)], project.context)
    assert result.returncode == 0, result.stderr
    assert (dest / "out/app").read_text() == "x\n" and (dest / "out/notes.txt").read_text() == "mine\n"
    after = {c["Id"] for c in api.containers(all=True, filters={"label": "compimg.temporary"})}
    assert not {c for c in after - containers_before
                if project.slug in str(api.inspect_container(c)["Config"]["Labels"])}
    assert [t for i in api.images(name=project.repository) for t in i["RepoTags"] if "--x-" in t] == []


# --- what travels -----------------------------------------------------------------------------

@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The sessions the builds of a test make, in order."""
    from invoke_compimg.engine.control import client

    made: list[Any] = []
    real = client.dockerfile_session

    def recording(**kwargs: Any) -> Any:
        made.append(real(**kwargs))
        return made[-1]

    monkeypatch.setattr(client, "dockerfile_session", recording)
    return made


def test_only_what_changed_travels_and_nothing_outside_the_folder(make_project: Any, sessions: list[Any]) -> None:
    """A 2,000-file tree read whole: the first build sends it; after one edit only that file
    travels (the session's shared key stays the same for the folder). A link to /etc/passwd
    goes as a link."""
    files = {f"src/{i // 100}/f{i}.txt": f"{i}\n" * 50 for i in range(2000)}
    project = make_project("NAME build\nFROM busybox\nCOPY src /src\nRUN cat /src/0/f7.txt > /seen\n", files)
    (project.context / "src" / "passwd").symlink_to("/etc/passwd")
    Builder(Project(project.dockerfile, project.context), Settings(builder="buildkit")).build()
    first = sum(t.files for t in sessions[-1].transfers if t.dir == "context")
    assert first >= 2000
    (project.context / "src/0/f7.txt").write_text("edited\n")
    sessions.clear()
    builder = Builder(Project(project.dockerfile, project.context), Settings(builder="buildkit"))
    ids = builder.build()
    sent = [t for t in sessions[-1].transfers if t.dir == "context"]
    assert sum(t.files for t in sent) == 1, sent
    assert sessions[-1].listed_ahead == 1  # the frontend asked what was listed while it planned
    from invoke_compimg.engine.client import Engine

    with Engine() as engine:
        listing = image_listing(engine.api, ids["build"], "src")
    assert listing["src/passwd"][1] == "sym" and listing["src/passwd"][5] == "/etc/passwd"


@pytest.mark.parametrize("dockerfile", [
    # several sources (a folder with ./ and /, a wildcard, ADD, a bind mount), .dockerignore not read
    "NAME build\nFROM busybox\nCOPY src/a ./docs/ /in/\nCOPY *.go /g/\nADD top.txt /t\n"
    "RUN --mount=type=bind,source=docs,target=/d cat /d/r.md > /r\n",
    # the whole context: the frontend reads .dockerignore and sends its patterns
    "NAME build\nFROM busybox\nCOPY . /all\n",
], ids=["sources", "whole context"])
def test_the_context_request_the_frontend_makes_is_the_one_listed_ahead(make_project: Any, dockerfile: str,
                                                                      sessions: list[Any]) -> None:
    """What the session expects BuildKit's Dockerfile frontend to ask for is what it asks."""
    project = make_project(dockerfile, {"src/a/x.go": "x", "src/b/y.go": "y", "main.go": "m", "docs/r.md": "r",
                                        "docs/s.md": "s", "top.txt": "t", "notes.txt": "n",
                                        ".dockerignore": "# comment\n\n*.md\n!docs/r.md\n/notes.txt\n./src/b/../b\n"})
    Builder(Project(project.dockerfile, project.context), Settings(builder="buildkit", no_cache=True)).build()
    assert [s.listed_ahead for s in sessions] == [1]


def test_output_spec_shorthand_and_errors() -> None:
    from invoke_compimg.building.specs import parse_output
    from invoke_compimg.errors import UserError

    assert parse_output("out") == OutputSpec("local", os.path.abspath("out"))
    assert parse_output("type=tar,dest=a.tar") == OutputSpec("tar", os.path.abspath("a.tar"))
    with pytest.raises(UserError, match="give dest=PATH"):
        parse_output("type=local")


def test_an_unchanged_output_is_not_written_again(make_project: Any, tmp_path: Path) -> None:
    project = make_project(OUTPUT.format(word="same"))
    out = tmp_path / "out"

    def build(*flags: str) -> str:
        result = cli("compimg", ["build", "--progress", "plain", "-o", str(out), *flags], project.context)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "(exported)" in build()
    written = os.stat(out / "app")
    again = build()
    assert "is up to date (inputs unchanged since it was written)" in again and "#" not in again  # no solve
    assert os.stat(out / "app").st_ino == written.st_ino
    (out / "app").unlink()  # the user removes a file the build wrote: written again
    assert "(exported)" in build() and (out / "app").read_text() == "same\n"
    (out / "app").write_text("edit\n")  # or edits one (same size)
    assert "(exported)" in build() and (out / "app").read_text() == "same\n"
    assert "up to date" in build()
    assert "(exported)" in build("--no-cache")  # as docker build -o: always written
    (project.context / "Dockerfile").write_text(OUTPUT.format(word="new"))
    assert "(exported)" in build() and (out / "app").read_text() == "new\n"
