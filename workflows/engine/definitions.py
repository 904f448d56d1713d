"""Workflow definitions: the JSON format of the built-in engine, checked on save with a JSON Schema
(jsonschema) and then with what a schema cannot say (unique ids, transition targets, reachability,
variables). Every problem names its path, e.g. ``definition.states[2].transitions.success``.

Three shapes: ``sequence`` (steps in order), ``state_machine`` (states, each with an action and
transitions on success, error, timeout or a named event, ending in terminal states) and ``dag``
(nodes with ``depends_on``: independent nodes run at once, a node runs when all it depends on
have succeeded, a failed node stops its dependents only).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from ..validators import validate_headers
from . import variables
from .actions import REGISTRY

TYPES = ("sequence", "state_machine", "dag")
MAX_STEPS = 200
DEFAULT_MAX_TRANSITIONS = 100
MAX_TRANSITIONS = 10_000
MAX_PROBLEMS = 20
TERMINAL_STATUSES = ("succeeded", "failed")

ID = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"}
_TEXT = {"type": "string", "maxLength": 2000}


def _step(kind: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": ID,
        "description": _TEXT,
        "action": {"enum": sorted(REGISTRY)},
        "params": {"type": "object"},
    }
    if kind == "state":
        properties["transitions"] = {"type": "object", "propertyNames": ID, "additionalProperties": ID}
        properties["terminal"] = {"enum": list(TERMINAL_STATUSES)}
        required = ["id"]
    elif kind == "node":
        properties["depends_on"] = {"type": "array", "items": ID, "uniqueItems": True, "maxItems": MAX_STEPS}
        required = ["id", "action"]
    else:
        required = ["id", "action"]
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


_COMMON = {"description": _TEXT, "config": {"type": "object"}}
SCHEMAS: dict[str, dict[str, Any]] = {
    "sequence": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "steps"],
        "properties": {
            "type": {"const": "sequence"},
            **_COMMON,
            "error_policy": {"enum": ["stop", "continue"]},
            "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": _step("step")},
        },
    },
    "state_machine": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "initial_state", "states"],
        "properties": {
            "type": {"const": "state_machine"},
            **_COMMON,
            "initial_state": ID,
            "max_transitions": {"type": "integer", "minimum": 1, "maximum": MAX_TRANSITIONS},
            "states": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": _step("state")},
        },
    },
    "dag": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "nodes"],
        "properties": {
            "type": {"const": "dag"},
            **_COMMON,
            "nodes": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": _step("node")},
        },
    },
}
KEYS = {"sequence": "steps", "state_machine": "states", "dag": "nodes"}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
_PARAM_VALIDATORS = {name: Draft202012Validator(action.schema) for name, action in REGISTRY.items()}


def path_text(path: Iterable[str | int]) -> str:
    """``("states", 2, "transitions", "success")`` as ``definition.states[2].transitions.success``."""
    text = "definition"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_problems(validator: Draft202012Validator, value: Any, prefix: tuple[str | int, ...]) -> list[str]:
    errors = sorted(validator.iter_errors(value), key=lambda error: [str(part) for part in error.absolute_path])
    return [f"{path_text((*prefix, *error.absolute_path))}: {_message(error)}" for error in errors]


def _message(error: SchemaError) -> str:
    if error.validator == "pattern" and error.schema is ID:
        return f"{error.instance!r} is not an id: a letter or _, then letters, digits, _ or -, at most 64"
    if error.validator == "anyOf":
        # A value that is neither the plain form nor one variable: say what the plain form wants.
        inner = min(error.context or [], key=lambda sub: len(sub.path), default=None)
        return f"{inner.message if inner else error.message}, or one variable like ${{inputs.x}}"
    return error.message


def steps_of(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """A definition's steps, states or nodes, in the order written."""
    return definition.get(KEYS.get(definition.get("type", ""), ""), [])


def find_step(definition: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(step for step in steps_of(definition) if step["id"] == step_id)


def first_step(definition: dict[str, Any]) -> str:
    """Where a sequence or state machine starts ("" for a dag: its roots start together)."""
    if definition["type"] == "state_machine":
        return definition["initial_state"]
    if definition["type"] == "dag":
        return ""
    return definition["steps"][0]["id"]


def ancestors(nodes: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For each node of an acyclic dag, every node it depends on, directly or not."""
    by_id = {node["id"]: node for node in nodes}
    found: dict[str, set[str]] = {}

    def of(node_id: str) -> set[str]:
        if node_id not in found:
            direct = set(by_id[node_id].get("depends_on", []))
            found[node_id] = direct.union(*(of(parent) for parent in direct))
        return found[node_id]

    for node in nodes:
        of(node["id"])
    return found


def definition_problems(definition: Any) -> list[str]:
    """Everything wrong with ``definition``, each naming its path; [] if it can run."""
    if not isinstance(definition, dict):
        return ["definition: must be a JSON object"]
    kind = definition.get("type")
    if kind not in TYPES:
        return [f"definition.type: must be one of {', '.join(TYPES)}, not {kind!r}"]
    problems = _schema_problems(_VALIDATORS[kind], definition, ())
    if problems:
        return problems[:MAX_PROBLEMS]
    key = KEYS[kind]
    steps = definition[key]
    ids: dict[str, int] = {}
    for index, step in enumerate(steps):
        where = (key, index)
        if step["id"] in ids:
            problems.append(f"{path_text((*where, 'id'))}: {step['id']!r} is used by {key}[{ids[step['id']]}] too")
        ids.setdefault(step["id"], index)
        if "action" in step:
            params = step.get("params", {})
            param_problems = _schema_problems(_PARAM_VALIDATORS[step["action"]], params, (*where, "params"))
            if not param_problems and step["action"] == "http" and "headers" in params:
                param_problems = _header_problems(params["headers"], (*where, "params", "headers"))
            problems += param_problems + _variable_problems(params, (*where, "params"))
    # Variables may name any step (a state machine can come back to one); check once all ids are known.
    for index, step in enumerate(steps):
        problems += _step_reference_problems(step.get("params", {}), (key, index, "params"), set(ids))
    if kind == "state_machine":
        problems += _state_machine_problems(definition, ids)
    if kind == "dag" and not problems:
        problems += _dag_problems(steps, ids)
    return problems[:MAX_PROBLEMS]


def _dag_problems(nodes: list[dict[str, Any]], ids: dict[str, int]) -> list[str]:
    problems = []
    for index, node in enumerate(nodes):
        for position, parent in enumerate(node.get("depends_on", [])):
            where = path_text(("nodes", index, "depends_on", position))
            if parent == node["id"]:
                problems.append(f"{where}: a node cannot depend on itself")
            elif parent not in ids:
                problems.append(f"{where}: {parent!r} is not a node id")
    if problems:
        return problems
    cycle = _cycle(nodes)
    if cycle:
        return [f"definition.nodes: the dependencies form a cycle: {' -> '.join(cycle)}"]
    # A node reads only what has surely run before it: the nodes it depends on, directly or not.
    before = ancestors(nodes)
    for index, node in enumerate(nodes):
        for path, name in variables.references(node.get("params", {})):
            parts = name.split(".")
            if parts[0] == "steps" and len(parts) > 1 and parts[1] in ids and parts[1] not in before[node["id"]]:
                problems.append(
                    f"{path_text(('nodes', index, 'params', *path))}: ${{{name}}}: node {node['id']!r} does not "
                    f"depend on {parts[1]!r}, so it may run before it; add it to depends_on"
                )
    return problems


def _cycle(nodes: list[dict[str, Any]]) -> list[str]:
    """One cycle of the dependencies as [a, b, ..., a], or [] if there is none."""
    depends = {node["id"]: node.get("depends_on", []) for node in nodes}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node_id: str) -> list[str]:
        state[node_id] = 1
        path.append(node_id)
        for parent in depends[node_id]:
            if state.get(parent) == 1:
                return [*path[path.index(parent) :], parent]
            if parent not in state:
                found = visit(parent)
                if found:
                    return found
        state[node_id] = 2
        path.pop()
        return []

    for node_id in depends:
        if node_id not in state:
            found = visit(node_id)
            if found:
                return found
    return []


def _header_problems(headers: dict[str, str], where: tuple[str | int, ...]) -> list[str]:
    """The workflow headers' rules (no reserved names such as Idempotency-Key, sizes), where no variable is."""
    if any(True for _ in variables.references(headers)):
        return []  # filled in at run time: the step checks them then
    try:
        validate_headers(headers)
    except ValidationError as exc:
        return [f"{path_text(where)}: {message}" for message in exc.messages]
    return []


def _variable_problems(params: Any, where: tuple[str | int, ...]) -> list[str]:
    problems = []
    for path, name in variables.references(params):
        problem = variables.path_problem(name)
        if problem:
            problems.append(f"{path_text((*where, *path))}: {problem}")
    return problems


def _step_reference_problems(params: Any, where: tuple[str | int, ...], ids: set[str]) -> list[str]:
    problems = []
    for path, name in variables.references(params):
        parts = name.split(".")
        if parts[0] == "steps" and variables.path_problem(name) is None:
            if len(parts) < 2 or parts[1] not in ids:
                target = parts[1] if len(parts) > 1 else ""
                problems.append(f"{path_text((*where, *path))}: ${{{name}}} names no step {target!r}")
            elif len(parts) > 2 and parts[2] not in ("output", "status", "error"):
                problems.append(
                    f"{path_text((*where, *path))}: ${{{name}}}: a step has output, status and error, not {parts[2]!r}"
                )
    return problems


def _state_machine_problems(definition: dict[str, Any], ids: dict[str, int]) -> list[str]:
    problems = []
    states = definition["states"]
    if definition["initial_state"] not in ids:
        problems.append(f"definition.initial_state: {definition['initial_state']!r} is not a state id")
    for index, state in enumerate(states):
        where = ("states", index)
        if "terminal" in state:
            for name in ("action", "params", "transitions"):
                if name in state:
                    problems.append(f"{path_text((*where, name))}: a terminal state has no {name}")
            continue
        if "action" not in state:
            problems.append(f"{path_text(where)}: a state needs an action, or terminal: succeeded or failed")
        if not state.get("transitions"):
            problems.append(f"{path_text((*where, 'transitions'))}: a state that is not terminal needs transitions")
        for event, target in (state.get("transitions") or {}).items():
            if target not in ids:
                problems.append(f"{path_text((*where, 'transitions', event))}: {target!r} is not a state id")
        transitions = state.get("transitions") or {}
        if state.get("action") == "branch" and "success" not in transitions:
            # Each way the branch can pick needs somewhere to go (or a success transition to fall back on).
            params = state.get("params", {})
            ways = [(("params", "cases", index, "event"), case["event"]) for index, case in enumerate(params["cases"])]
            ways.append((("params", "default"), params.get("default", "default")))
            for place, event in ways:
                if event not in transitions:
                    problems.append(
                        f"{path_text((*where, *place))}: the event {event!r} has no transition; add transitions.{event}"
                    )
    if problems:
        return problems
    reached = {definition["initial_state"]}
    queue = deque(reached)
    while queue:
        state = states[ids[queue.popleft()]]
        for target in (state.get("transitions") or {}).values():
            if target not in reached:
                reached.add(target)
                queue.append(target)
    for index, state in enumerate(states):
        if state["id"] not in reached:
            problems.append(
                f"{path_text(('states', index))}: state {state['id']!r} is unreachable from "
                f"initial_state {definition['initial_state']!r}"
            )
    if not any("terminal" in states[ids[state_id]] for state_id in reached):
        problems.append("definition.states: no terminal state can be reached, so a run could never end")
    return problems


def definition_check(definition: Any) -> None:
    """Refuse a definition that cannot run: ValidationError on ``definition``, one message per problem."""
    problems = definition_problems(definition)
    if problems:
        raise ValidationError({"definition": problems})
