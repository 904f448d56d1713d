"""Variables in step params: ``${inputs.x}``, ``${config.x}``, ``${steps.<id>.output.<path>}``, ``${now}``,
``${date}``, ``${time}``, ``${execution.scheduled_for}``.

A string that is exactly one variable takes the value with its JSON type (a number stays a number);
variables inside a longer string are written into it as text. A missing variable is an error that
names it. No expressions are evaluated: a variable is a path, nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from ..exceptions import WorkflowError

VARIABLE = re.compile(r"\$\{([^${}]*)\}")
NAMESPACES = frozenset({"inputs", "config", "steps", "now", "date", "time", "execution"})
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class VariableMissing(WorkflowError):
    """A step names a variable the run does not have."""


def scope(
    *,
    inputs: dict[str, Any],
    config: dict[str, Any],
    steps: dict[str, Any],
    execution: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The values variables are read from; times in UTC."""
    now = (now or timezone.now()).astimezone(UTC)
    return {
        "inputs": inputs,
        "config": config,
        "steps": steps,
        "execution": execution,
        "now": now.isoformat(),
        "date": now.date().isoformat(),
        "time": now.time().replace(microsecond=0).isoformat(),
    }


def path_problem(path: str) -> str | None:
    """Why ``path`` (the text between ``${`` and ``}``) can never be a variable, or None."""
    path = path.strip()
    if not _PATH.match(path):
        return f"${{{path}}} is not a variable: use names joined by dots, e.g. ${{inputs.region}}"
    head = path.split(".", 1)[0]
    if head not in NAMESPACES:
        return f"${{{path}}}: unknown variable {head!r}; use one of {', '.join(sorted(NAMESPACES))}"
    return None


def lookup(values: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (list items by their index), or VariableMissing naming the path."""
    path = path.strip()
    value: Any = values
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise VariableMissing(f"variable ${{{path}}} is missing")
    return value


def resolve(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with every variable in its strings filled in (dicts and lists walked)."""
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole:
            return lookup(values, whole.group(1))
        return VARIABLE.sub(lambda match: _text(lookup(values, match.group(1))), value)
    if isinstance(value, dict):
        return {key: resolve(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, values) for item in value]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def references(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every variable named in ``value``'s strings, with where it is."""
    if isinstance(value, str):
        for match in VARIABLE.finditer(value):
            yield path, match.group(1).strip()
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from references(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from references(item, (*path, index))
