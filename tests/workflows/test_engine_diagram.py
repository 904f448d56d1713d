"""The admin's server-side diagram of a definition, and of a run's path through it."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.factories import WorkflowFactory
from tests.workflows.test_engine_definitions import DAG, MACHINE, SEQUENCE
from tests.workflows.test_engine_runner import drive, start
from workflows.engine.diagram import definition_svg

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("definition", "boxes", "arrows"), [(SEQUENCE, 4, 3), (MACHINE, 4, 4), (DAG, 4, 4)])
def test_definition_svg__one_box_per_step_and_one_arrow_per_edge(definition, boxes, arrows):
    """Every step is a box with its id; transitions (one arrow per pair of states), sequence order and
    depends_on are arrows."""
    svg = definition_svg(definition)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == boxes
    assert svg.count('marker-end="url(#arrow)"') == arrows
    for step in definition.get("steps") or definition.get("states") or definition["nodes"]:
        assert f">{step['id']}</text>" in svg


def test_definition_svg__lays_out_left_to_right_and_routes_loops_below():
    """A dag's join is right of both branches; a transition back to an earlier state runs below the boxes,
    and two events to the same state are one arrow with both names."""
    svg = definition_svg(DAG)
    x = {
        name: int(value)
        for value, name in re.findall(r'<rect x="(\d+)"[^>]*/><text class="id" x="\d+" y="\d+">(\w+)<', svg)
    }
    assert x["start"] < x["left"] == x["right"] < x["join"]
    looping = {
        "type": "state_machine",
        "initial_state": "a",
        "states": [
            {"id": "a", "action": "log", "params": {"message": "x"}, "transitions": {"success": "b"}},
            {"id": "b", "action": "log", "params": {"message": "x"}, "transitions": {"success": "a", "error": "end"}},
            {"id": "end", "terminal": "failed"},
        ],
    }
    svg = definition_svg(looping)
    back = re.search(r'<path d="M(\S+),(\S+) L\S+,(\S+) L', svg)  # b -> a: down, along, up
    assert back and float(back.group(3)) > float(back.group(2))
    twice = definition_svg(MACHINE)
    assert ">error, timeout</text>" in twice


def test_definition_svg__escapes_text():
    """Labels are escaped (they come from user input, even if checked on save)."""
    svg = definition_svg({"type": "sequence", "steps": [{"id": "a<b", "action": "log"}]})
    assert "a&lt;b" in svg and "a<b" not in svg


def test_admin__workflow_page_shows_the_diagram_and_the_run_page_its_path(admin_client, user):
    """The workflow's change page draws its definition; a run's page colours the steps it took."""
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=MACHINE)
    page = admin_client.get(reverse("admin:workflows_workflow_change", args=[workflow.pk])).content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="workflow-diagram"' in page
    run = drive(
        start(
            {
                "type": "state_machine",
                "initial_state": "check",
                "states": [
                    {
                        "id": "check",
                        "action": "condition",
                        "params": {"if": {"eq": [1, 1]}},
                        "transitions": {"true": "yes", "false": "no"},
                    },
                    {"id": "yes", "terminal": "succeeded"},
                    {"id": "no", "terminal": "failed"},
                ],
            },
            user=user,
        )
    )
    page = admin_client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk])).content.decode()
    assert '<g class="step succeeded"><title>check (condition): succeeded</title>' in page
    assert '<g class="step reached"><title>yes (end: succeeded): reached</title>' in page
    assert '<g class="step "><title>no (end: failed)</title>' in page
    assert 'stroke="#343a40"' in page  # the arrow check -> yes, which the run took
