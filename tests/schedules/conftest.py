"""Fixtures shared by the schedules tests."""

from __future__ import annotations

import pytest

from schedules import dispatch
from workflows.client import CallResult


@pytest.fixture
def calls(monkeypatch):
    """Replaces the outbound call: each WorkflowCall is recorded in ``calls``; the answers are
    ``answers`` in order (results, or exceptions to raise), then a plain 200."""
    state = {"answers": [], "calls": []}

    def fake(call):
        state["calls"].append(call)
        answer = state["answers"].pop(0) if state["answers"] else CallResult(200, "", "{}", 3)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(dispatch, "call_workflow", fake)
    return state
