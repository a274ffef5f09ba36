"""Ways to show a parsed graph: text, JSON, Graphviz dot, Mermaid, native Dockerfile.
Formatting only: the native text is `lowering.multi_stage`'s."""

from __future__ import annotations

import json
from collections.abc import Callable

from .lowering import multi_stage
from .model import Graph, Stage


def base_label(stage: Stage) -> str:
    return f"stage {stage.base}" if stage.base_stage else stage.base


def _sources(stage: Stage) -> list[tuple[str, str, int]]:
    """(stage read, what, line) for every cross-stage read: COPY paths, RUN mounts, and
    the ONBUILD triggers it runs."""
    found = [(c.stage, " ".join(c.paths), c.line) for c in stage.copies]
    for mount in stage.mounts:
        if mount.origin.stage:
            found.append((mount.origin.stage, f"--mount {mount.option('source') or '/'}", 0))
    for trigger in stage.inherited:
        found += [(name, f"ONBUILD (line {trigger.line})", trigger.line) for name in trigger.stages]
    return found


def as_text(graph: Graph) -> str:
    out = [f"{graph.path}: {len(graph.stages)} stage(s), final: {graph.final.name}"]
    final_needs = {s.name for s in graph.needs()}
    for stage in graph.stages:
        mark = ("  (final)" if stage is graph.final else "" if stage.name in final_needs
                else "  (not needed by the final stage)")
        out.append(f"{stage.name}  line {stage.line}  FROM {base_label(stage)}{mark}")
        for copy in stage.copies:
            out.append(f"    line {copy.line}: COPY {copy.stage}:{' '.join(copy.paths)} -> {copy.dest}")
        for source, what, _ in _sources(stage)[len(stage.copies):]:
            out.append(f"    reads stage {source}: {what}")
    return "\n".join(out) + "\n"


def as_dict(graph: Graph) -> dict[str, object]:
    return {
        "final": graph.final.name,
        "stages": [
            {
                "name": stage.name,
                "line": stage.line,
                "base": stage.base,
                "depends_on": list(stage.depends_on),
                "copies": [
                    {"from": copy.stage, "src": list(copy.paths), "dest": copy.dest, "line": copy.line}
                    for copy in stage.copies
                ],
                **({"mounts": [{"from": m.origin.stage, "type": m.type, "target": m.option("target")}
                               for m in stage.mounts if m.origin.stage]}
                   if any(m.origin.stage for m in stage.mounts) else {}),
                **({"onbuild_from": sorted({n for t in stage.inherited for n in t.stages})}
                   if any(t.stages for t in stage.inherited) else {}),
            }
            for stage in graph.stages
        ],
    }


def as_json(graph: Graph) -> str:
    return json.dumps(as_dict(graph), indent=2, ensure_ascii=False) + "\n"


def _edges(graph: Graph) -> list[tuple[str, str, str]]:
    """(from, to, label) for every dependency: `FROM` for bases, paths for copies."""
    edges = []
    for stage in graph.stages:
        if stage.base_stage:
            edges.append((stage.base, stage.name, "FROM"))
        for source, what, _ in _sources(stage):
            edges.append((source, stage.name, what))
    return edges


def as_dot(graph: Graph) -> str:
    out = ["digraph compimg {", "  rankdir=LR;"]
    for stage in graph.stages:
        shape = "doubleoctagon" if stage is graph.final else "box"
        label = json.dumps(stage.name + "\n" + base_label(stage))
        out.append(f"  {json.dumps(stage.name)} [shape={shape}, label={label}];")
    for source, target, label in _edges(graph):
        out.append(f"  {json.dumps(source)} -> {json.dumps(target)} [label={json.dumps(label)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def as_mermaid(graph: Graph) -> str:
    def node(name: str) -> str:
        return "s_" + name.replace("-", "_").replace(".", "_")

    out = ["flowchart LR"]
    for stage in graph.stages:
        label = f"{stage.name}<br/>{base_label(stage)}".replace('"', "#quot;")
        out.append(f'  {node(stage.name)}["{label}"]')
    for source, target, label in _edges(graph):
        label = label.replace('"', "#quot;")
        out.append(f'  {node(source)} -->|"{label}"| {node(target)}')
    return "\n".join(out) + "\n"


def as_native(graph: Graph) -> str:
    """The equivalent native multi-stage Dockerfile (`FROM ... AS`, `COPY --from=`), its
    heredocs as written."""
    return multi_stage(graph, name_all=False, keep_heredocs=True).text


FORMATS: dict[str, Callable[[Graph], str]] = {
    "text": as_text, "json": as_json, "dot": as_dot, "mermaid": as_mermaid, "native": as_native,
}
