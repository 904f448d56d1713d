"""A definition as an SVG diagram, drawn here on the server (no script, no CDN), optionally with a
run's path through it: each step coloured by how its last attempt ended, the current one outlined.

Left to right: a sequence in order; a state machine by its distance from the initial state; a dag by
its longest chain of dependencies. Transitions that go back (a loop, an error state met earlier) run
below the boxes. Every text is escaped; the ids are the definition's own (checked on save).
"""

from __future__ import annotations

from collections import deque
from html import escape
from typing import Any

BOX_WIDTH, BOX_HEIGHT = 150, 44
GAP_X, GAP_Y = 70, 26
MARGIN = 20
COLOURS = {
    "succeeded": ("#e6f4ea", "#1e7e34"),
    "failed": ("#fdecea", "#b02a37"),
    "running": ("#e7f1ff", "#0b5ed7"),
    "waiting": ("#e7f1ff", "#0b5ed7"),
    "ready": ("#f8f9fa", "#6c757d"),
    "skipped": ("#f8f9fa", "#adb5bd"),
    None: ("#ffffff", "#6c757d"),
}


def _graph(definition: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    kind = definition.get("type")
    if kind == "sequence":
        steps = definition.get("steps", [])
        edges = [(a["id"], b["id"], "") for a, b in zip(steps, steps[1:], strict=False)]
        return steps, edges
    if kind == "state_machine":
        states = definition.get("states", [])
        return states, [
            (state["id"], target, event)
            for state in states
            for event, target in (state.get("transitions") or {}).items()
        ]
    nodes = definition.get("nodes", [])
    return nodes, [(parent, node["id"], "") for node in nodes for parent in node.get("depends_on", [])]


def _layers(
    definition: dict[str, Any], steps: list[dict[str, Any]], edges: list[tuple[str, str, str]]
) -> dict[str, int]:
    ids = [step["id"] for step in steps]
    if definition.get("type") == "sequence":
        return {step_id: index for index, step_id in enumerate(ids)}
    if definition.get("type") == "state_machine":
        layer = {definition.get("initial_state"): 0}
        queue = deque([definition.get("initial_state")])
        while queue:
            source = queue.popleft()
            for edge_source, target, _ in edges:
                if edge_source == source and target not in layer:
                    layer[target] = layer[source] + 1
                    queue.append(target)
        last = max(layer.values(), default=0) + 1
        return {step_id: layer.get(step_id, last) for step_id in ids}
    parents = {step["id"]: step.get("depends_on", []) for step in steps}
    layer: dict[str, int] = {}

    def depth(step_id: str, seen: frozenset[str] = frozenset()) -> int:
        if step_id not in layer:
            layer[step_id] = 1 + max(
                (depth(parent, seen | {step_id}) for parent in parents.get(step_id, []) if parent not in seen),
                default=-1,
            )
        return layer[step_id]

    return {step_id: depth(step_id) for step_id in ids}


def definition_svg(
    definition: dict[str, Any],
    *,
    statuses: dict[str, str] | None = None,
    path: list[str] | None = None,
    current: str = "",
) -> str:
    """The SVG markup of ``definition``. A run on it: ``statuses`` (step id -> how its last attempt
    ended), ``path`` (the step ids in the order the run entered them: the arrows it took are dark)
    and ``current`` (outlined)."""
    if not isinstance(definition, dict) or not definition:
        return ""
    steps, edges = _graph(definition)
    if not steps:
        return ""
    # Two events to the same state are one arrow with both names.
    merged: dict[tuple[str, str], list[str]] = {}
    for source, target, label in edges:
        merged.setdefault((source, target), []).append(label)
    edges = [
        (source, target, ", ".join(label for label in labels if label)) for (source, target), labels in merged.items()
    ]
    seen = statuses or {}
    if definition.get("type") == "dag":
        taken = {(source, target) for source, target, _ in edges if seen.get(source) == "succeeded" and target in seen}
    else:
        taken = set(zip(path or [], (path or [])[1:], strict=False))
    layers = _layers(definition, steps, edges)
    rows: dict[int, int] = {}
    position: dict[str, tuple[int, int]] = {}
    for step in steps:
        column = layers[step["id"]]
        row = rows.get(column, 0)
        rows[column] = row + 1
        position[step["id"]] = (
            MARGIN + column * (BOX_WIDTH + GAP_X),
            MARGIN + 16 + row * (BOX_HEIGHT + GAP_Y),
        )
    width = MARGIN * 2 + (max(layers.values()) + 1) * (BOX_WIDTH + GAP_X) - GAP_X
    bottom = MARGIN + 16 + max(rows.values()) * (BOX_HEIGHT + GAP_Y) - GAP_Y
    backs = [edge for edge in edges if position[edge[1]][0] <= position[edge[0]][0]]
    # Arrows that go back (loops, error states met earlier) run below the boxes, each lower than the last.
    height = bottom + MARGIN + 18 * len(backs) + (16 if backs else 0)
    below = {(source, target): bottom + 18 * (index + 1) for index, (source, target, _) in enumerate(backs)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="workflow-diagram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(str(definition.get("type", "")))} diagram">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6c757d"/></marker></defs>',
        "<style>text{font:12px sans-serif}.id{font-weight:bold}.label{fill:#495057;font-size:11px}</style>",
    ]
    for source, target, label in edges:
        if source not in position or target not in position:
            continue
        (sx, sy), (tx, ty) = position[source], position[target]
        if tx > sx:
            x1, y1, x2, y2 = sx + BOX_WIDTH, sy + BOX_HEIGHT / 2, tx, ty + BOX_HEIGHT / 2
            line = f"M{x1},{y1} L{x2},{y2}"
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 - 4
        else:
            # Back (or within a column): down from the source, along below the boxes, up into the target.
            x1, y1, x2, y2 = sx + BOX_WIDTH / 2 + 12, sy + BOX_HEIGHT, tx + BOX_WIDTH / 2 - 12, ty + BOX_HEIGHT
            lane = below[(source, target)]
            line = f"M{x1},{y1} L{x1},{lane} L{x2},{lane} L{x2},{y2}"
            lx, ly = (x1 + x2) / 2, lane - 4
        colour = "#343a40" if (source, target) in taken else "#adb5bd"
        parts.append(f'<path d="{line}" fill="none" stroke="{colour}" stroke-width="1.4" marker-end="url(#arrow)"/>')
        if label:
            parts.append(f'<text class="label" x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle">{escape(label)}</text>')
    for step in steps:
        x, y = position[step["id"]]
        status = seen.get(step["id"])
        if status and "terminal" in step:
            # A terminal state is reached, not run: coloured by the ending it stands for.
            fill, stroke = COLOURS[step["terminal"]]
            status = "reached"
        else:
            fill, stroke = COLOURS.get(status, COLOURS[None])
        width_line = 3 if step["id"] == current else 1.4
        kind = step.get("action") or f"end: {step.get('terminal', '')}"
        title = f"{step['id']} ({kind})" + (f": {status}" if status else "")
        parts.append(
            f'<g class="step {escape(status or "")}"><title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{width_line}"/>'
            f'<text class="id" x="{x + 8}" y="{y + 18}">{escape(step["id"][:22])}</text>'
            f'<text x="{x + 8}" y="{y + 34}">{escape(kind[:24])}{" · " + escape(status) if status else ""}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
