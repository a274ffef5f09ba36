"""Ways to show a parsed graph: text, JSON, Graphviz dot, Mermaid, native Dockerfile."""

from __future__ import annotations

import json
from collections.abc import Callable

from .graph import Graph, Stage
from .syntax import PLACEHOLDER_RE


def _base(stage: Stage) -> str:
    return f"stage {stage.base}" if stage.base_stage else stage.base


def as_text(graph: Graph) -> str:
    out = [f"{graph.path}: {len(graph.stages)} stage(s), final: {graph.final.name}"]
    for stage in graph.build_order():
        mark = "  (final)" if stage is graph.final else ""
        out.append(f"{stage.name}  line {stage.line}  FROM {_base(stage)}{mark}")
        for copy in stage.copies:
            out.append(f"    line {copy.line}: COPY {copy.stage}:{' '.join(copy.paths)} -> {copy.dest}")
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
        for copy in stage.copies:
            edges.append((copy.stage, stage.name, " ".join(copy.paths)))
    return edges


def as_dot(graph: Graph) -> str:
    out = ["digraph compimg {", "  rankdir=LR;"]
    for stage in graph.stages:
        shape = "doubleoctagon" if stage is graph.final else "box"
        label = json.dumps(stage.name + "\n" + _base(stage))
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
        label = f"{stage.name}<br/>{_base(stage)}".replace('"', "#quot;")
        out.append(f'  {node(stage.name)}["{label}"]')
    for source, target, label in _edges(graph):
        label = label.replace('"', "#quot;")
        out.append(f'  {node(source)} -->|"{label}"| {node(target)}')
    return "\n".join(out) + "\n"


def as_native(graph: Graph) -> str:
    """The equivalent native multi-stage Dockerfile (`FROM ... AS`, `COPY --from=`)."""
    referenced = {name for stage in graph.stages for name in stage.depends_on}
    lines = [f"# escape={graph.escape}"] if graph.escape != "\\" else []
    lines += [line for arg in graph.global_args for line in arg.lowered]
    for stage in graph.stages:
        lines.append("")
        for instruction in stage.instructions:
            for line in instruction.lowered:
                line = PLACEHOLDER_RE.sub(lambda m: m.group(1), line)
                if instruction.keyword == "FROM" and (stage.named or stage.name in referenced):
                    line += f" AS {stage.name}"
                lines.append(line)
    return "\n".join(lines).lstrip("\n") + "\n"


FORMATS: dict[str, Callable[[Graph], str]] = {
    "text": as_text, "json": as_json, "dot": as_dot, "mermaid": as_mermaid, "native": as_native,
}
