"""A project's own tasks, with the compimg tasks added next to them."""

from invoke import Collection, call, task

import invoke_compimg

compimg = invoke_compimg.collection()  # ./Dockerfile, context "." (next to this file)


@task
def test(c):
    """Run the Go tests on this machine."""
    c.run("go test ./...")


@task
def lint(c):
    """Vet the sources."""
    c.run("go vet ./...")


@task
def check(c):
    """Build the unit_tests stage: `go test` inside the build image."""
    invoke_compimg.build(c, target="unit_tests")


@task(pre=[call(compimg["build"], target="run", tag=["run=my-app:1.0"])])
def release(c):
    """Build the image we ship, tagged my-app:1.0."""
    print("released my-app:1.0")


@task
def changelog(c):
    """Print the changelog."""
    print("first release")


docs = Collection("docs", changelog)
ns = Collection(test, lint, check, release, docs)
ns.add_collection(compimg)
