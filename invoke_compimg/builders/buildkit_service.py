"""Builds on a BuildKit service (`buildkitd`, reached as `buildctl --addr` reaches it) instead of
a Docker engine's BuildKit: the same solves, with a session through `Control.Session`, but no
image store. So there are no whole-unit skips by image name (BuildKit's own cache makes an
unchanged solve quick), base images are pulled by the service itself (with the session's
credentials), and a result is kept only where the user sends it: files (`--output`), or images
pushed to a registry (`--tag REF --push`). A build that keeps neither says so in one line.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..building.specs import OutputSpec
from ..dockerfile.model import Stage
from ..engine.buildkit.network import check_network
from ..errors import EngineError
from ..names import registry_hosts
from .base import Builder, Plan, Unit
from .buildkit import BuildKitBuilder


class BuildKitServiceBuilder(BuildKitBuilder):
    """The BuildKit builder, on a BuildKit service at `settings.buildkit`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._control: Any = None
        self._connect_lock = threading.Lock()
        self._warned = False
        self._host_platform: str | None = None
        self._unreachable: EngineError | None = None

    @property
    def address(self) -> str:
        assert self.settings.buildkit is not None
        return self.settings.buildkit.address

    @property
    def serves_sessions(self) -> bool:
        return True

    @property
    def with_session(self) -> bool:
        return True

    @property
    def stores_images(self) -> bool:
        return False

    @property
    def host_platform(self) -> str:
        """The platform of the service's first worker, asked once."""
        with self._connect_lock:
            known = self._host_platform
        if known is None:
            workers = self.control().list_workers()
            known = str(workers[0].platforms[0]) if workers and workers[0].platforms else "the BuildKit service"
            with self._connect_lock:
                self._host_platform = known
        return known

    def control(self) -> Any:
        """The service's Control client, connected on first use (an unreachable address or a TLS
        mismatch is one line naming the address)."""
        from ..engine.control.client import connect
        from ..engine.control.transport import TLS

        with self._connect_lock:
            if self._unreachable is not None:  # asked again (side-by-side units): the same line, at once
                raise self._unreachable
            if self._control is None:
                spec = self.settings.buildkit
                assert spec is not None
                tls = TLS(ca=spec.ca, cert=spec.cert, key=spec.key) if spec.ca or spec.cert else None
                try:
                    self._control = connect(spec.address, tls=tls)
                except EngineError as exc:
                    self._unreachable = exc
                    raise
            return self._control

    def close(self) -> None:
        with self._connect_lock:
            control, self._control = self._control, None
        if control is not None:
            control.close()

    def external_triggers(self, stage: Stage) -> tuple[str, ...]:
        return ()  # the service resolves base images itself; there is no local store to read them from

    def allowed(self, plan: Plan) -> list[str] | None:
        # What a remote base image's ONBUILD triggers read cannot be known here: the service
        # reads what .dockerignore leaves (the frontend sends its patterns as excludes).
        return None

    def registry_hosts(self, unit: Unit) -> set[str] | None:
        """Registries the service may ask credentials for: those this build names (base and
        copied-from images, the `# syntax=` frontend, cache refs, pushed tags). A service is
        another machine: it never gets a login the build does not use."""
        refs = [*self.images_read(unit), *self.settings.cache_from, *self.settings.tags.get(unit.name, ())]
        if self.graph.syntax:
            refs.append(self.graph.syntax)
        cache = self.settings.cache_to
        if cache is not None and cache.ref:
            refs.append(cache.ref)
        return {host for ref in refs if ref != "scratch" for host in registry_hosts(ref)}

    def network(self) -> str | None:
        requested = self.settings.network
        return None if requested in (None, "default") else requested  # checked before anything is sent

    def check(self, stages: Sequence[Stage]) -> None:
        Builder.check(self, stages)  # a service exports registry caches too: no engine's limits
        check_network(self.settings.network)

    def exporter(self, unit: Unit, output: OutputSpec | None, names: Sequence[str] = ()) -> Any:
        """Files for `--output`; with `--push`, the stage's tags as an image pushed by the
        service; otherwise nothing but BuildKit's cache, said once."""
        from ..engine.control.client import Exporter

        if output is not None:
            return Exporter.local(output.dest) if output.type == "local" else Exporter.tar(output.dest)
        refs = self.settings.tags.get(unit.name, ())
        if refs and self.settings.push:
            return Exporter.image(list(refs), push=True, engine=False)
        with self._connect_lock:
            warned, self._warned = self._warned, True
        if not warned:
            why = "its tags are not pushed without --push" if refs else "it has no tag to push"
            self.reporter.warning(f"building on the BuildKit service at {self.address} keeps nothing but its cache "
                                  f"({why}); add -o DIR, or --tag REF --push")
        return None
