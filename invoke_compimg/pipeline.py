"""Building stages on the engine, in the order the graph gives, and what we do with
the images afterwards (tags, push, extraction, clean). Knows nothing of Invoke."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import docker

from . import engine
from .context import files_read, fingerprint
from .errors import EngineError, UserError
from .extract import Extracted, extract
from .graph import Stage
from .project import Project, Settings
from .syntax import fill_placeholders

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : ")


@dataclass(frozen=True)
class StageResult:
    name: str
    image_id: str
    size: int
    seconds: float
    cached: bool = False  # reused from earlier in this process


class Builder:
    """Builds stages of one project with one set of settings, printing as it goes.

    Stages whose prerequisites are done build at the same time (up to `jobs`); a stage
    whose inputs are unchanged since an earlier build is not sent to the engine again."""

    def __init__(self, project: Project, settings: Settings, out: TextIO | None = None,
                 api: docker.APIClient | None = None) -> None:
        self.project = project
        self.settings = settings
        self.out = out or sys.stdout
        self.jobs = max(1, int(settings.jobs))
        self.results: list[StageResult] = []
        self._main_api = api
        self._local = threading.local()
        self._lock = threading.Lock()
        self._images: dict[str, str | None] = {}

    @property
    def api(self) -> docker.APIClient:
        """One client per thread (requests sessions are not shared across threads); only
        the first one negotiates the API version."""
        client = getattr(self._local, "api", None)
        if client is None:
            if self._main_api is None:
                self._main_api = engine.connect()
                client = self._main_api
            else:
                client = engine.connect(version=self._main_api.api_version)
            self._local.api = client
        return client

    # --- building -----------------------------------------------------------------------
    def build(self, target: str | None = None) -> dict[str, str]:
        """Build `target` (default: final) and every stage it needs, nothing else."""
        goal = self.project.stage(target, flag="--target") if target else self.project.graph.final
        self.api  # noqa: B018 - connect (and fail clearly) before starting any worker
        return self._schedule(list(self.project.graph.needs(goal.name)))

    def _schedule(self, pending: list[Stage]) -> dict[str, str]:
        """Run stages as soon as the images they use exist. A stage's dependents start the
        moment its image ID is known; naming and measuring it happen off that path."""
        ids: dict[str, str] = {}
        active: set[str] = set()
        failures: list[BaseException] = []
        events: queue.Queue[tuple[str, Stage, object]] = queue.Queue()

        def work(stage: Stage, known: dict[str, str]) -> None:
            try:
                result = self.build_stage(stage, known, lambda image_id: events.put(("image", stage, image_id)))
                events.put(("done", stage, result))
            except BaseException as exc:  # reported by the main thread
                events.put(("failed", stage, exc))

        # Daemon threads, not an executor: on Ctrl-C the process must not wait for running
        # builds. Exiting closes their connections, and the engine then cancels them and
        # removes their containers (rm/forcerm).
        while pending or active:
            if not failures:  # after a failure, let running stages finish; start no more
                for stage in [s for s in pending if all(d in ids for d in s.depends_on)]:
                    if len(active) >= self.jobs:
                        break
                    pending.remove(stage)
                    active.add(stage.name)
                    threading.Thread(target=work, args=(stage, dict(ids)), daemon=True,
                                     name=f"compimg-{stage.name}").start()
            if not active:
                break
            kind, stage, value = events.get()
            if kind == "image":
                ids[stage.name] = str(value)
            else:
                active.discard(stage.name)
                if kind == "failed":
                    failures.append(value)  # type: ignore[arg-type]
        if failures:
            for extra in failures[1:]:
                self.out.write(f"also failed: {extra}\n")
            raise failures[0]
        return ids

    def build_stage(self, stage: Stage, known: Mapping[str, str] | None = None,
                    on_image: Callable[[str], None] | None = None) -> StageResult:
        """Build one stage; the stages it depends on must be in `known` or already built
        (in this process, or earlier under their local names). `on_image` hears the image
        ID as soon as it exists, before the image is named and measured."""
        key = self._key(stage.name)
        cached = self.project._built.get(key)
        if cached is not None and self._still_there(cached.image_id):
            if on_image:
                on_image(cached.image_id)
            self._apply_tags(stage, cached.image_id)
            return self._record(StageResult(cached.name, cached.image_id, cached.size, 0.0, cached=True))
        started = time.monotonic()
        ids = {name: self._dependency_id(stage, name, known or {}) for name in stage.depends_on}
        text = fill_placeholders(self.project.graph.lowered(stage.name), ids)
        with self._context_errors(stage):
            paths = files_read(str(self.project.context), stage.context_sources)
            inputs = self._inputs_digest(stage, text, paths)
        inputs_ref = self.project.inputs_ref(stage.name, inputs) if inputs else None
        # --no-cache never reuses, but still records the inputs for the next build.
        found = engine.inspect(self.api, inputs_ref) if inputs_ref and not self.settings.no_cache else None
        previous: dict[str, Any] | None = None  # what the local name held before a rebuild
        if found is not None:
            image_id, size, names = str(found["Id"]), int(found["Size"]), list(found.get("RepoTags") or [])
            if on_image:
                on_image(image_id)
            self._print(f"[{stage.name}] ", f"inputs unchanged: reusing {image_id.split(':')[-1][:12]}")
        else:
            previous = engine.inspect(self.api, self.project.local_ref(stage.name))
            image_id = self._send(stage, text, paths)
            if on_image:
                on_image(image_id)
            size, names = -1, []
        for ref in (inputs_ref, self.project.local_ref(stage.name)):
            if ref and ref not in names:
                engine.tag(self.api, image_id, ref)
        if found is None:
            self._retire(stage, previous, image_id, keep=inputs_ref)
        self._apply_tags(stage, image_id)
        if size < 0:
            size = engine.image_size(self.api, image_id)
        result = StageResult(stage.name, image_id, size, time.monotonic() - started, cached=found is not None)
        self.project._built[key] = result
        return self._record(result)

    def _retire(self, stage: Stage, previous: dict[str, Any] | None, image_id: str,
                keep: str | None) -> None:
        """`previous` (what the stage's local name pointed to before this build started) is
        superseded by `image_id`, now named: drop its inputs records and, once nothing names
        it, remove it, so rebuilds do not pile up images. This runs in the stage's own thread
        while its dependents build. Looking before the build, not after, keeps images of runs
        going on at the same time out of this. Only inspects, never lists: listing images
        costs the engine time in proportion to every image it holds (0.12 s a call measured
        with 900 images)."""
        if previous is None or previous["Id"] == image_id:
            return
        for ref in previous.get("RepoTags") or []:
            # `keep` is the record just given to the new image (a --no-cache rebuild of the
            # same inputs has the same name): removing the name would remove it from there.
            if ref.startswith(self.project.inputs_ref(stage.name)) and ref != keep:
                engine.untag(self.api, ref)
        now = engine.inspect(self.api, previous["Id"])
        if now is not None and not now.get("RepoTags"):
            engine.remove_unnamed(self.api, previous["Id"])

    def _record(self, result: StageResult) -> StageResult:
        with self._lock:
            self.results.append(result)
        return result

    def _inputs_digest(self, stage: Stage, text: str, paths: list[str]) -> str | None:
        """Everything the stage's result depends on, or None when something cannot be
        pinned (an image that is not on the engine yet: the build will pull it)."""
        digest = hashlib.sha256(f"compimg-inputs-1\0{stage.name}\0{text}\0".encode())
        for image in stage.images:
            found = self._external_image_id(image)
            if found is None:
                return None
            digest.update(f"{image}={found}\0".encode())
        for name, value in sorted(self.settings.build_args.items()):
            digest.update(f"arg {name}={value}\0".encode())
        digest.update(fingerprint(str(self.project.context), paths).encode())
        return digest.hexdigest()[:40]

    def _external_image_id(self, ref: str) -> str | None:
        """The ID of a base or `COPY --from` image, looked up once per build."""
        with self._lock:
            if ref in self._images:
                return self._images[ref]
        found = engine.image_id_of(self.api, ref)
        with self._lock:
            self._images[ref] = found
        return found

    def _key(self, stage: str) -> tuple[str, tuple[tuple[str, str], ...], bool]:
        """What an image built earlier in this process is remembered by."""
        return stage, tuple(sorted(self.settings.build_args.items())), self.settings.no_cache

    def _still_there(self, image_id: str) -> bool:
        return engine.image_id_of(self.api, image_id) == image_id

    def _dependency_id(self, stage: Stage, name: str, known: Mapping[str, str]) -> str:
        if name in known:
            return known[name]
        built = self.project._built.get(self._key(name))
        if built is not None:
            return built.image_id
        found = engine.image_id_of(self.api, self.project.local_ref(name))
        if found is None:
            raise UserError(f"stage '{stage.name}' needs stage '{name}', which has not been "
                            f"built; run compimg.stage.{self.project.graph.stage(name).task_name} first",
                            where=str(self.project.dockerfile), line=stage.line)
        return found

    def _send(self, stage: Stage, dockerfile_text: str, paths: list[str]) -> str:
        prefix = f"[{stage.name}] "
        lines = self.project.graph.lowered_lines(stage.name)
        step: list[int] = [0]
        errors: list[str] = []
        partial: list[str] = [""]  # the engine splits long lines across messages

        def on_event(event: engine.BuildEvent) -> None:
            if event.kind == "error":
                errors.append(event.text.strip())
                self._print(prefix, "ERROR: " + event.text)
            elif event.kind == "log":
                text = partial[0] + event.text
                complete, _, partial[0] = text.rpartition("\n")
                for line in complete.split("\n") if complete or text.endswith("\n") else []:
                    match = _STEP_RE.match(line)
                    if match:
                        step[0] = int(match.group(1))
                    self._print(prefix, line)

        with self._context_errors(stage):
            archive = engine.context_archive(str(self.project.context), dockerfile_text, paths)
        try:
            with engine.engine_errors(f"stage '{stage.name}'", where=str(self.project.dockerfile), line=stage.line):
                image_id = engine.build(
                    self.api, archive, build_args=self.settings.build_args,
                    no_cache=self.settings.no_cache, network=self.settings.network, on_event=on_event,
                )
        finally:
            archive.close()
            if partial[0]:
                self._print(prefix, partial[0])
        if errors or image_id is None:
            where, instruction = str(self.project.dockerfile), ""
            line = stage.line
            if 0 < step[0] <= len(lines):
                text, line = lines[step[0] - 1]
                instruction = " at " + _short(text)
            reason = errors[-1] if errors else "the engine's stream ended without an image ID"
            raise EngineError(f"stage '{stage.name}' failed{instruction}: {_short(reason, 300)}",
                              where=where, line=line)
        return image_id

    @contextlib.contextmanager
    def _context_errors(self, stage: Stage) -> Iterator[None]:
        """The file system's errors while reading the build context, as one line."""
        try:
            yield
        except OSError as exc:
            raise UserError(f"stage '{stage.name}' cannot read its build context {self.project.context} "
                            f"({exc}); check that folder's files and permissions",
                            where=str(self.project.dockerfile), line=stage.line) from exc

    def _print(self, prefix: str, text: str) -> None:
        lines = [prefix + line.rstrip() + "\n" for line in text.splitlines() if line.strip()]
        with self._lock:  # whole lines only, even with stages building side by side
            self.out.write("".join(lines))
            self.out.flush()

    def _apply_tags(self, stage: Stage, image_id: str) -> None:
        for ref in self.settings.tags.get(stage.name, ()):
            engine.tag(self.api, image_id, ref)

    # --- after the build ----------------------------------------------------------------
    def push(self) -> None:
        for stage_name, refs in self.settings.tags.items():
            prefix = f"[{stage_name}] "

            def show(event: engine.BuildEvent, prefix: str = prefix) -> None:
                self._print(prefix, event.text)

            for ref in refs:
                self._print(prefix, f"pushing {ref}")
                engine.push(self.api, ref, show)

    def table(self) -> str:
        order = {stage.name: stage.index for stage in self.project.graph.stages}
        results = sorted(self.results, key=lambda r: order[r.name])
        rows = [("stage", "image", "size", "seconds")]
        for r in results:
            rows.append((r.name, r.image_id.split(":")[-1][:12], _megabytes(r.size),
                         f"{r.seconds:.2f}" + (" (reused)" if r.cached else "")))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                         for row in rows)
        if len(results) > 1:
            final, others = results[-1], results[:-1]
            largest = max(others, key=lambda r: r.size)
            ratio = largest.size / final.size if final.size else 0.0
            text += (f"\nfinal image '{final.name}': {_megabytes(final.size)}; largest build stage "
                     f"'{largest.name}': {_megabytes(largest.size)} ({ratio:.0f}x larger)")
        return text + "\n"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def extract_artifact(project: Project, builder: Builder, spec: str, dest: str) -> Extracted:
    """`STAGE:/PATH` -> build the stage if needed, then copy PATH into `dest` like `docker cp`."""
    stage_name, colon, path = spec.partition(":")
    if not colon or not path.startswith("/"):
        raise UserError(f"'{spec}': write STAGE:/ABSOLUTE/PATH, e.g. build:/go/bin/app")
    stage = project.stage(stage_name, flag="extract-artifact")
    image_id = builder.build(stage.name)[stage.name]
    api = builder.api
    engine.reap_leftovers(api, project.slug)
    with engine.stopped_container(api, image_id, project.slug) as container:
        try:
            with engine.archive_of(api, container, path) as chunks:
                builder.out.write(f"copying {spec} into {dest}\n")
                builder.out.flush()
                with engine.engine_errors(f"copying {spec}"), engine.open_tar_stream(chunks) as archive:
                    return extract(archive, dest, spec)
        except FileNotFoundError:
            raise UserError(f"'{path}' does not exist in stage '{stage.name}'; check the path "
                            f"with `compimg.shell {stage.name}`", where=str(project.dockerfile),
                            line=stage.line) from None


def clean(project: Project, api: docker.APIClient, out: TextIO) -> tuple[int, int]:
    """Remove this project's temporary containers (by label; not those of a run that is
    going on) and every name in its own repository; an image also tagged by the user (e.g.
    `--tag my-app`) keeps that name."""
    containers = engine.reap_leftovers(api, project.slug)
    tags = engine.tags_in_repository(api, project.repository)
    for _, tag in tags:
        engine.untag(api, tag)
    images = {image_id for image_id, _ in tags}
    out.write(f"removed {containers} container(s) and {len(images)} image(s) of {project.repository}\n")
    return containers, len(images)
