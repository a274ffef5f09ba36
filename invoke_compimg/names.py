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
