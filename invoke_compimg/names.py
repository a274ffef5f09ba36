"""Image names and IDs as people read them, whatever engine reported them."""

from __future__ import annotations

import re

_DEFAULT_REGISTRY_PREFIXES = ("docker.io/library/", "docker.io/", "index.docker.io/library/",
                              "index.docker.io/", "localhost/")


def normalise_ref(ref: str) -> str:
    """An image name as Docker's CLI shows it: engines such as Podman report
    `docker.io/library/busybox:latest` or `localhost/x:y` where Docker says `busybox:latest`.
    Names are compared in this form everywhere."""
    for prefix in _DEFAULT_REGISTRY_PREFIXES:
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    return ref if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else ref + ":latest"


def short_id(image_id: str) -> str:
    """`sha256:0d2745efe275…` -> `0d2745efe275`, as `docker images` shows it."""
    return image_id.split(":")[-1][:12]


def split_ref(ref: str) -> tuple[str, str]:
    """`host:5000/repo:tag` -> (`host:5000/repo`, `tag`); no tag -> ""; digests are not tags."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash and "@" not in ref[slash + 1:colon]:
        return ref[:colon], ref[colon + 1:]
    return ref, ""


# An image reference (`name[:tag]`, a registry host and port first), as Docker's reference
# grammar writes it: lower-case path components joined by `.`, `_`, `__` or dashes.
_REF = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?::[0-9]+)?"
                  r"(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*(?::[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127})?$")


def valid_ref(ref: str) -> bool:
    """Is `ref` an image reference a tag can be (no digest)?"""
    return bool(_REF.match(ref))


DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")  # BuildKit asks for the last


def registry_hosts(ref: str) -> tuple[str, ...]:
    """The registry host(s) an image reference is pulled from or pushed to, as Docker's
    reference grammar tells them: a first component with a `.` or `:`, or `localhost`; else
    Docker Hub, under each name it is asked by."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return ("docker.io", *DOCKER_HUB_HOSTS[1:]) if first in DOCKER_HUB_HOSTS else (first,)
    return DOCKER_HUB_HOSTS


def service_address(address: str) -> tuple[str, str, int] | None:
    """A BuildKit service's address as buildctl's --addr writes it: `unix://PATH` ->
    ("unix", PATH, 0); `tcp://HOST:PORT` -> ("tcp", HOST, PORT) (an IPv6 host in brackets is
    kept so); None if it is neither."""
    if address.startswith("unix://") and len(address) > len("unix://"):
        return "unix", address[len("unix://"):], 0
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rstrip("/").rpartition(":")
        if host and port.isdigit():
            return "tcp", host, int(port)
    return None
