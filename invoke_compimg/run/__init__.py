"""One run of a build: the composition root that puts a builder, reuse, the scheduler and a
reporter together for one project and one set of settings."""

from .build_run import BuildRun

__all__ = ["BuildRun"]
