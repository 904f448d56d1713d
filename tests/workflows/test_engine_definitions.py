"""Definitions of the built-in engine: the JSON Schema and semantic checks, on every path that saves one."""

from __future__ import annotations

import copy

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from tests.factories import WorkflowFactory
from workflows import services
from workflows.engine.definitions import definition_problems, path_text

SEQUENCE = {
    "type": "sequence",
    "error_policy": "continue",
    "steps": [
        {"id": "hello", "action": "log", "params": {"message": "hello ${inputs.who}"}},
        {"id": "pick", "action": "set", "params": {"values": {"region": "${inputs.region}"}}},
        {"id": "pause", "action": "wait", "params": {"seconds": 5}},
        {"id": "tell", "action": "log", "params": {"message": "region ${steps.pick.output.region}"}},
    ],
}
MACHINE = {
    "type": "state_machine",
    "initial_state": "fetch",
    "max_transitions": 20,
    "states": [
        {
            "id": "fetch",
            "action": "http",
            "params": {"url": "https://example.com/hook", "body": {"n": 1}, "retries": 1},
            "transitions": {"success": "check", "error": "broken", "timeout": "broken"},
        },
        {
            "id": "check",
            "action": "condition",
            "params": {"if": {"eq": ["${steps.fetch.output.status}", 200]}},
            "transitions": {"true": "done", "false": "broken"},
        },
        {"id": "done", "terminal": "succeeded"},
        {"id": "broken", "terminal": "failed"},
    ],
}


def with_change(definition, change):
    changed = copy.deepcopy(definition)
    change(changed)
    return changed


def test_definition_problems__valid_sequence_and_state_machine_pass():
    """The examples of the README's format are accepted as written."""
    assert definition_problems(SEQUENCE) == []
    assert definition_problems(MACHINE) == []


def test_path_text__names_list_items_and_keys():
    """Paths read the way the issue writes them."""
    assert path_text(("states", 2, "transitions", "success")) == "definition.states[2].transitions.success"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["states"][2].update(transitions={"success": "nowhere"}), "definition.states[2].transitions"),
        (
            lambda d: d["states"][1]["transitions"].update(false="nowhere"),
            "definition.states[1].transitions.false: 'nowhere' is not a state id",
        ),
        (lambda d: d.update(initial_state="start"), "definition.initial_state: 'start' is not a state id"),
        (lambda d: d["states"][3].update(id="done"), "definition.states[3].id: 'done' is used by states[2] too"),
        (
            lambda d: d["states"].append({"id": "lonely", "terminal": "failed"}),
            "definition.states[4]: state 'lonely' is unreachable from initial_state 'fetch'",
        ),
        (lambda d: d["states"][0].update(action="teleport"), "definition.states[0].action: 'teleport' is not one of"),
        (lambda d: d["states"][0]["params"].pop("url"), "definition.states[0].params: 'url' is a required property"),
        (
            lambda d: d["states"][0]["params"].update(timeout_seconds=0),
            "definition.states[0].params.timeout_seconds: 0 is less than the minimum of 1",
        ),
        (lambda d: d["states"][1]["params"]["if"].update(like=[1, 2]), "definition.states[1].params.if"),
        (
            lambda d: d["states"][0].pop("transitions"),
            "definition.states[0].transitions: a state that is not terminal needs transitions",
        ),
        (lambda d: d["states"][1].pop("action"), "definition.states[1]: a state needs an action"),
        (lambda d: d.update(max_transitions=0), "definition.max_transitions: 0 is less than the minimum of 1"),
        (
            lambda d: d["states"][0]["params"].update(headers={"Idempotency-Key": "x"}),
            "definition.states[0].params.headers: ",
        ),
        (
            lambda d: d["states"][0]["params"].update(url="${secrets.token}"),
            "definition.states[0].params.url: ${secrets.token}: unknown variable 'secrets'",
        ),
        (
            lambda d: d["states"][1]["params"]["if"].update(eq=["${steps.nope.output}", 1]),
            "definition.states[1].params.if.eq[0]: ${steps.nope.output} names no step 'nope'",
        ),
        (
            lambda d: d.update(
                states=[
                    {
                        "id": "fetch",
                        "action": "log",
                        "params": {"message": "again"},
                        "transitions": {"success": "fetch"},
                    }
                ]
            ),
            "definition.states: no terminal state can be reached",
        ),
    ],
)
def test_definition_problems__state_machine_errors_name_their_path(change, expected):
    """Each semantic or schema problem is reported with the path of the value at fault."""
    problems = definition_problems(with_change(MACHINE, change))
    assert any(problem.startswith(expected) for problem in problems), problems


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ([], "definition: must be a JSON object"),
        ({"type": "dag", "nodes": []}, "definition.nodes: [] should be non-empty"),
        ({"type": "flowchart"}, "definition.type: must be one of sequence, state_machine, dag"),
        ({"type": "sequence", "steps": []}, "definition.steps: [] should be non-empty"),
        (
            {"type": "sequence", "steps": [{"id": "1x", "action": "log", "params": {"message": "m"}}]},
            "definition.steps[0].id: '1x' is not an id",
        ),
        (
            {
                "type": "sequence",
                "error_policy": "retry",
                "steps": [{"id": "a", "action": "log", "params": {"message": "m"}}],
            },
            "definition.error_policy: 'retry' is not one of ['stop', 'continue']",
        ),
        (
            {"type": "sequence", "steps": [{"id": "a", "action": "wait", "params": {"seconds": "soon"}}]},
            "definition.steps[0].params.seconds: 'soon' is not of type 'number', or one variable",
        ),
        (
            {"type": "sequence", "steps": [{"id": "a", "action": "wait", "params": {}}]},
            "definition.steps[0].params: {} should be non-empty",
        ),
        (
            {"type": "sequence", "steps": [{"id": "a", "action": "log", "params": {"message": "m"}, "extra": 1}]},
            "definition.steps[0]: Additional properties are not allowed ('extra' was unexpected)",
        ),
    ],
)
def test_definition_problems__sequence_errors_name_their_path(definition, expected):
    """Wrong types, unknown kinds and bad params are reported by path, kinds not built yet say so."""
    problems = definition_problems(definition)
    assert any(problem.startswith(expected) for problem in problems), problems


DAG = {
    "type": "dag",
    "nodes": [
        {"id": "start", "action": "set", "params": {"values": {"n": 1}}},
        {"id": "left", "action": "log", "params": {"message": "${steps.start.output.n}"}, "depends_on": ["start"]},
        {"id": "right", "action": "log", "params": {"message": "r"}, "depends_on": ["start"]},
        {
            "id": "join",
            "action": "log",
            "params": {"message": "${steps.left.output.message}"},
            "depends_on": ["left", "right"],
        },
    ],
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["nodes"][3].update(depends_on=["left", "middle"]),
            "definition.nodes[3].depends_on[1]: 'middle' is not a node id",
        ),
        (
            lambda d: d["nodes"][1].update(depends_on=["left"]),
            "definition.nodes[1].depends_on[0]: a node cannot depend on itself",
        ),
        (
            lambda d: d["nodes"][0].update(depends_on=["join"]),
            "definition.nodes: the dependencies form a cycle: start -> join -> left -> start",
        ),
        (
            lambda d: d["nodes"][2]["params"].update(message="${steps.left.output.message}"),
            "definition.nodes[2].params.message: ${steps.left.output.message}: node 'right' does not depend on 'left'",
        ),
        (
            lambda d: d["nodes"][1].update(depends_on=["start", "start"]),
            "definition.nodes[1].depends_on: ['start', 'start'] has non-unique elements",
        ),
        (
            lambda d: d["nodes"][2].update(transitions={"success": "join"}),
            "definition.nodes[2]: Additional properties are not allowed",
        ),
    ],
)
def test_definition_problems__dag_errors_name_their_path(change, expected):
    """depends_on targets exist, no cycles, and a node reads only the outputs of nodes it depends on."""
    assert definition_problems(DAG) == []
    problems = definition_problems(with_change(DAG, change))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_workflow_create__bad_definition_is_a_validation_error_and_saves_nothing(user):
    """The service refuses it on the definition field, naming the path; no workflow is created."""
    bad = with_change(MACHINE, lambda d: d["states"][0]["transitions"].update(success="gone"))
    with pytest.raises(ValidationError) as caught:
        services.workflow_create(owner=user, name="raid", endpoint_url="", definition=bad)
    assert caught.value.message_dict["definition"] == [
        "definition.states[0].transitions.success: 'gone' is not a state id"
    ]
    assert not user.workflows.exists()


def test_workflow_update__bad_definition_changes_nothing(user):
    """An update with a broken definition leaves the stored one as it was."""
    workflow = services.workflow_create(owner=user, name="raid", endpoint_url="", definition=MACHINE)
    with pytest.raises(ValidationError):
        services.workflow_update(workflow=workflow, definition={"type": "state_machine"})
    workflow.refresh_from_db()
    assert workflow.definition == MACHINE


def test_workflow_create__definition_with_endpoint_url_is_refused(user):
    """A definition runs on the built-in endpoint only: with an endpoint_url it would never run."""
    with pytest.raises(ValidationError) as caught:
        services.workflow_create(owner=user, name="x", endpoint_url="https://example.com/hook", definition=SEQUENCE)
    assert "clear endpoint_url" in caught.value.message_dict["definition"][0]


def test_workflow_create__empty_definition_keeps_todays_behaviour(user):
    """No definition (or null from a form) is stored as {}: runs are only recorded."""
    workflow = services.workflow_create(owner=user, name="x", endpoint_url="", definition=None)
    assert workflow.definition == {}


def test_api__bad_definition_is_400_naming_the_path(client, user):
    """The API answers 400 in its error shape with the path; never a 500."""
    client.force_login(user)
    bad = with_change(SEQUENCE, lambda d: d["steps"][2]["params"].update(seconds=-1))
    response = client.post(
        reverse("workflow-list"),
        {"name": "stream", "endpoint_url": "", "definition": bad},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "errors": {
            "definition": [
                "definition.steps[2].params.seconds: -1 is less than the minimum of 0, or one variable like ${inputs.x}"
            ]
        }
    }


def test_api__definition_saved_and_returned(client, user):
    """A valid definition is stored and shown as written."""
    client.force_login(user)
    response = client.post(
        reverse("workflow-list"),
        {"name": "raid", "endpoint_url": "", "definition": MACHINE},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["definition"] == MACHINE


def test_admin__bad_definition_is_shown_on_the_form(admin_client):
    """The admin form shows the problem next to the definition field and saves nothing."""
    workflow = WorkflowFactory(endpoint_url="")
    url = reverse("admin:workflows_workflow_change", args=[workflow.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    bad = with_change(MACHINE, lambda d: d.update(initial_state="nowhere"))
    import json

    response = admin_client.post(
        url,
        {
            "name": workflow.name,
            "endpoint_url": "",
            "http_method": "POST",
            "timeout_seconds": 5,
            "headers": "{}",
            "default_inputs": "{}",
            "definition": json.dumps(bad),
            "is_active": "on",
            "secret": "",
            "steps-TOTAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "definition.initial_state: &#x27;nowhere&#x27; is not a state id" in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.definition == {}


def test_readme__definition_examples_are_valid():
    """The definitions the README's "Built-in workflow engine" section shows pass the checks as written."""
    import json
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Built-in workflow engine", 1)[1].split("\n## ", 1)[0]
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL)]
    assert [example["type"] for example in examples] == ["state_machine", "sequence", "dag"]
    for example in examples:
        assert definition_problems(example) == []
