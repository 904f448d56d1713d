"""Variables in step params: paths only, types kept for a lone variable, a missing one named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workflows.engine import variables

NOW = datetime(2027, 1, 4, 9, 30, 15, 123456, tzinfo=UTC)
VALUES = variables.scope(
    inputs={"n": 3, "flag": False, "tags": ["a", "b"], "who": "ana", "none": None},
    config={"base": "https://api.example.com"},
    steps={"fetch": {"output": {"body": {"items": [{"id": 7}]}}}},
    execution={"scheduled_for": "2027-01-04T09:00:00+00:00"},
    now=NOW,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${inputs.n}", 3),
        ("${inputs.flag}", False),
        ("${inputs.tags}", ["a", "b"]),
        ("${inputs.none}", None),
        ("${ inputs.who }", "ana"),
        ("${steps.fetch.output.body.items.0.id}", 7),
        ("n=${inputs.n} tags=${inputs.tags}", 'n=3 tags=["a","b"]'),
        ("${config.base}/v1/${inputs.who}", "https://api.example.com/v1/ana"),
        ("${now}", "2027-01-04T09:30:15.123456+00:00"),
        ("${date}", "2027-01-04"),
        ("${time}", "09:30:15"),
        ("${execution.scheduled_for}", "2027-01-04T09:00:00+00:00"),
        ({"a": ["${inputs.n}", {"b": "${inputs.who}"}]}, {"a": [3, {"b": "ana"}]}),
        ("no variables, $ and {} alone", "no variables, $ and {} alone"),
    ],
)
def test_resolve__fills_in_variables(value, expected):
    """A string that is one variable keeps the value's JSON type; inside text it is written as JSON text."""
    assert variables.resolve(value, VALUES) == expected


@pytest.mark.parametrize(
    ("value", "missing"),
    [
        ("${inputs.nope}", "${inputs.nope}"),
        ("x ${steps.fetch.output.body.items.5.id}", "${steps.fetch.output.body.items.5.id}"),
        ({"deep": ["${config.base.host}"]}, "${config.base.host}"),
        ("${steps.other.output}", "${steps.other.output}"),
    ],
)
def test_resolve__missing_variable_names_it(value, missing):
    """A path that leads nowhere is an error naming the variable."""
    with pytest.raises(variables.VariableMissing) as caught:
        variables.resolve(value, VALUES)
    assert str(caught.value) == f"variable {missing} is missing"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("inputs.x", None),
        ("now", None),
        (
            "secrets.key",
            "${secrets.key}: unknown variable 'secrets'; use one of config, date, execution, inputs, now, steps, time",
        ),
        ("inputs..x", "${inputs..x} is not a variable: use names joined by dots, e.g. ${inputs.region}"),
        ("__import__('os')", "${__import__('os')} is not a variable: use names joined by dots, e.g. ${inputs.region}"),
    ],
)
def test_path_problem__only_known_namespaces_and_plain_paths(path, problem):
    """Variables are paths into known namespaces; anything else (an expression) is refused on save."""
    assert variables.path_problem(path) == problem
