"""Draw a template's dialog as a state diagram, so a tenant can see what their YAML does.

Edges are the template's transitions labelled with their triggers (several triggers between the same two
states share one edge). A ``source: "*"`` rule is drawn once, from an "any state" node, instead of from every
state. ``to_dot`` output goes through Graphviz (``dot -Tsvg``) for SVG.
"""

from __future__ import annotations

from collections import defaultdict

from dialogs.machine import ANY
from dialogs.schema import Template

_ANY_NODE = "any_state"
_START_NODE = "__start"


def _edges(template: Template) -> dict[tuple[str, str], list[str]]:
    """(source, dest) -> triggers, in template order; "*" sources become the "any state" node."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rule in template.transitions:
        for source in rule.sources:
            triggers = edges[(_ANY_NODE if source == ANY else source, rule.dest)]
            if rule.trigger not in triggers:
                triggers.append(rule.trigger)
    return edges


def _has_wildcard(template: Template) -> bool:
    return any(ANY in rule.sources for rule in template.transitions)


def _flows(template: Template) -> dict[str, list[str]]:
    flows: dict[str, list[str]] = defaultdict(list)
    for name, state in template.states.items():
        flows[state.flow].append(name)
    return flows


def to_mermaid(template: Template) -> str:
    lines = ["stateDiagram-v2", f"    %% dialog template {template.name!r}", f"    [*] --> {template.initial}"]
    lines += [f'    state "{name} ({state.kind})" as {name}' for name, state in template.states.items()]
    if _has_wildcard(template):
        lines.append(f'    state "any state" as {_ANY_NODE}')
    lines += [f"    {src} --> {dst} : {', '.join(triggers)}" for (src, dst), triggers in _edges(template).items()]
    for flow, states in _flows(template).items():
        lines.append(f"    class {','.join(states)} flow_{flow}")
    lines += [f"    classDef flow_{flow} {style}" for flow, style in _mermaid_styles(template).items()]
    return "\n".join(lines) + "\n"


_PALETTE = ("#eeeeee", "#dbeafe", "#fee2e2", "#dcfce7", "#fef9c3", "#ede9fe")


def _mermaid_styles(template: Template) -> dict[str, str]:
    return {flow: f"fill:{_PALETTE[i % len(_PALETTE)]}" for i, flow in enumerate(template.flows)}


def to_dot(template: Template) -> str:
    lines = [
        f"digraph {_quote(template.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fillcolor="#ffffff"];',
        '  edge [fontname="Helvetica", fontsize=10];',
        f'  {_START_NODE} [shape=point, label=""];',
        f"  {_START_NODE} -> {_quote(template.initial)};",
    ]
    colours = dict(zip(template.flows, _PALETTE * (len(template.flows) // len(_PALETTE) + 1), strict=False))
    for flow, states in _flows(template).items():
        lines.append(f"  subgraph {_quote('cluster_' + flow)} {{")
        lines.append(f'    label={_quote(flow)}; style="rounded,dashed";')
        for name in states:
            label = f"{name}\\n({template.states[name].kind})"
            lines.append(f'    {_quote(name)} [label="{label}", fillcolor="{colours.get(flow, "#ffffff")}"];')
        lines.append("  }")
    if _has_wildcard(template):
        lines.append(f'  {_ANY_NODE} [label="any state", shape=ellipse, style=dashed];')
    for (src, dst), triggers in _edges(template).items():
        lines.append(f"  {_quote(src)} -> {_quote(dst)} [label={_quote(', '.join(triggers))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
