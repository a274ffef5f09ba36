"""--platform, as docker build and buildx take it, on the real engine (BuildKit 0.8, an amd64
worker, no emulator installed): the Go example cross-compiled to linux/arm64 (the artifact's
ELF header says aarch64), amd64 + arm64 in one `-o` build (buildx's DIR/linux_ARCH/ layout),
one platform stored as an image, extract-artifact --platform, and a RUN in a base image of
another architecture reported in one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import cli

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cross-go"
MACHINES = {0x3E: "x86-64", 0xB7: "aarch64"}


def machine(binary: Path) -> str:
    """The ELF header's e_machine (little-endian, at offset 18), as `file` names it."""
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", binary
    return MACHINES.get(int.from_bytes(header[18:20], "little"), "other")


@pytest.fixture
def cross(make_project: Any) -> Any:
    files = {name: (EXAMPLE / name).read_text() for name in ("main.go", "go.mod")}
    return make_project((EXAMPLE / "Dockerfile").read_text(), files, name="cross")


def test_the_go_example_cross_compiled_to_arm64(cross: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("compimg", ["build", "--platform", "linux/arm64", "-o", str(out)], cross.context)
    assert result.returncode == 0, result.stderr
    assert machine(out / "app") == "aarch64"


def test_two_platforms_into_one_folder(cross: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("compimg", ["build", "--platform", "linux/amd64,linux/arm64", "-o", str(out), "--progress", "plain"],
                 cross.context)
    assert result.returncode == 0, result.stderr
    assert machine(out / "linux_amd64" / "app") == "x86-64"
    assert machine(out / "linux_arm64" / "app") == "aarch64"
    assert sorted(p.name for p in out.iterdir()) == ["linux_amd64", "linux_arm64"]
    # Each platform's go build once, named for its platform as buildx does (both run on the
    # build platform); steps they share, once without one; the stage ends after both.
    lines = result.stdout.splitlines()
    go = "RUN GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 go build -o /out/app ."
    steps = {m[2]: m[1] for line in lines if (m := re.match(r"^\[build\] (#\d+) (\[.*)$", line))}
    assert sorted(steps) == ["[build 1/3] FROM --platform=$BUILDPLATFORM golang:1.19", "[build 2/3] COPY . .",
                             f"[linux/amd64 build 3/3] {go}", f"[linux/arm64 build 3/3] {go}"], lines
    ended = next(i for i, line in enumerate(lines) if re.match(r"^\[build\] (built|cached)", line))
    for title in (f"[linux/amd64 build 3/3] {go}", f"[linux/arm64 build 3/3] {go}"):
        number = steps[title]
        assert any(re.match(rf"^\[build\] {number} (DONE|CACHED)", line) for line in lines[:ended]), lines


def test_one_platform_is_an_image_and_the_platform_counts_for_reuse(cross: Any, api: Any, tmp_path: Path) -> None:
    arm = cli("compimg", ["build", "--platform", "linux/arm64", "-q"], cross.context)
    assert arm.returncode == 0, arm.stderr
    image = arm.stdout.strip()
    assert api.inspect_image(image)["Architecture"] == "arm64"
    native = cli("compimg", ["build", "-q"], cross.context)
    assert native.returncode == 0 and native.stdout.strip() != image
    assert api.inspect_image(native.stdout.strip())["Architecture"] == "amd64"
    # the platform is one of a unit's inputs: the native build replaced the arm64 image (as a
    # changed build arg does); arm64 again is built (from BuildKit's cache), then reused
    for expected in ("built", "reused"):
        again = cli("compimg", ["build", "--platform", "linux/arm64"], cross.context)
        assert again.returncode == 0 and f"[run] {expected}" in again.stdout, again.stdout
    out = tmp_path / "x"
    extracted = cli("compimg", ["extract-artifact", "--platform", "linux/arm64", "build:/out/app", "--dest", str(out)],
                    cross.context)
    assert extracted.returncode == 0, extracted.stderr
    assert machine(out / "app") == "aarch64"


def test_several_platforms_need_files_and_say_so(cross: Any) -> None:
    result = cli("compimg", ["build", "--platform", "linux/amd64,linux/arm64"], cross.context)
    error = result.stderr.strip()
    assert result.returncode == 1 and error.splitlines() == [error]
    assert "keeps one platform per image" in error and "-o DIR" in error
    classic = cli("compimg", ["build", "--platform", "linux/amd64,linux/arm64", "--builder", "classic"],
                  cross.context)
    assert classic.returncode == 1 and "builds one platform at a time" in classic.stderr
    bad = cli("compimg", ["build", "--platform", "linux/arm64/v8/x"], cross.context)
    assert bad.returncode == 1 and "is not os/arch[/variant]" in bad.stderr


@pytest.fixture
def arm_base(make_project: Any, api: Any, unique: str, tmp_path: Path) -> str:
    """A tiny linux/arm64 image whose /bin/sh is an arm64 program (built here from Go sources,
    for `FROM scratch` and BuildKit's arm64 export): this amd64 machine cannot run it."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs a Go toolchain on this machine (scripts/engine installs golang-go)")
    import os
    import subprocess

    source = tmp_path / "sh.go"
    source.write_text("package main\n\nfunc main() {}\n")
    subprocess.run([go, "build", "-o", str(tmp_path / "sh"), str(source)], check=True, cwd=tmp_path,
                   env={**os.environ, "GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0",
                        "GOCACHE": str(tmp_path / "gocache")})
    base = make_project("NAME base\nFROM scratch\nCOPY sh /bin/sh\n", {"sh": (tmp_path / "sh").read_bytes()},
                        name="armbase")
    (base.context / "sh").chmod(0o755)
    ref = f"{unique}:arm64"
    result = cli("compimg", ["build", "--platform", "linux/arm64", "-t", ref, "-q"], base.context)
    assert result.returncode == 0, result.stderr
    assert api.inspect_image(ref)["Architecture"] == "arm64"
    return ref


@pytest.mark.parametrize("chosen", ["buildkit", "classic"])
def test_a_run_step_of_another_architecture_is_one_line(make_project: Any, arm_base: str, chosen: str) -> None:
    project = make_project(f"NAME step\nFROM {arm_base}\nRUN echo hi\n")
    result = cli("compimg", ["build", "--platform", "linux/arm64", "--builder", chosen], project.context,
                 {"INVOKE_COMPIMG_BUILDER": None})
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert error.startswith(f"{project.dockerfile}:3: stage 'step' failed at RUN echo hi: its image is for "
                            "linux/arm64 and linux/amd64 cannot run it (exec format error"), error
    assert "tonistiigi/binfmt --install arm64" in error and "--platform=$BUILDPLATFORM" in error
