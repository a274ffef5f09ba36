"""The Docker SDK, imported the way every engine call here wants it.

The SDK imports paramiko whenever it is installed, which costs a whole command about 30 ms
(measured with -X importtime), and only an ssh:// engine uses it. So, unless DOCKER_HOST
names one, the SDK is imported with paramiko kept out, and `load_paramiko` hands it over
if an ssh:// engine is reached later in the same process. Every module of ours imports
the SDK from here (type-only imports aside)."""

from __future__ import annotations

import os
import sys


def _import_without_paramiko() -> None:
    if "docker" in sys.modules or "paramiko" in sys.modules or os.environ.get("DOCKER_HOST", "").startswith("ssh://"):
        return
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # `import paramiko` fails at once
    try:
        import docker  # noqa: F401
    finally:
        del sys.modules["paramiko"]


_import_without_paramiko()

import docker  # noqa: E402
import docker.errors  # noqa: E402
import docker.utils.build  # noqa: E402
import docker.utils.socket  # noqa: E402

__all__ = ["docker", "has_paramiko", "load_paramiko"]


def has_paramiko() -> bool:
    """Can paramiko be imported? (Asked only for ssh:// engines: it imports it.)"""
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return False
    return True


def load_paramiko() -> None:
    """Give the SDK paramiko after all, if it was kept out and can be imported."""
    import docker.transport.sshconn as sshconn

    if sshconn.paramiko is None and has_paramiko():
        import paramiko

        sshconn.paramiko = paramiko
