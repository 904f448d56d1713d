"""SCHEDULER_LOG_FORMAT=json: one JSON object per line, with the ids the worker and beat know."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from scheduler_project.logs import JsonFormatter
from schedules import dispatch, services


@pytest.fixture
def json_lines(settings):
    """The settings' LOGGING with the json formatter, its console handler writing to a buffer."""
    stream = io.StringIO()
    config = {**settings.LOGGING, "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}}}
    logging.config.dictConfig(config)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.config.dictConfig(settings.LOGGING)


def test_json_logs__dispatch_line_carries_trigger_and_workflow_ids(json_lines, trigger):
    """A fire for a paused trigger logs one JSON line with time, level, logger, message and the ids."""
    services.trigger_pause(trigger=trigger, reason="maintenance")
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=None) is None
    [entry] = [line for line in json_lines() if line["logger"] == "schedules.dispatch"]
    assert entry["level"] == "INFO"
    assert entry["message"] == f"fire for trigger {trigger.pk} ignored: it is paused"
    assert (entry["trigger_id"], entry["workflow_id"]) == (trigger.pk, trigger.workflow_id)
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "execution_id" not in entry and "task_id" not in entry


def test_json_formatter__writes_only_its_fields_and_the_exception():
    """Anything else a log call passes (headers, a secret) stays out of the line; an exception is written."""
    record = logging.LogRecord("workflows.client", logging.ERROR, __file__, 1, "call to %s failed", ("n8n",), None)
    record.execution_id = "6e24893f-2d06-4bef-ba59-d6001b4d61f9"
    record.headers = {"Authorization": "Bearer do-not-log"}
    record.secret = "whsec_do-not-log"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line and "do-not-log" not in line
    assert set(entry) == {"time", "level", "logger", "message", "execution_id", "exception"}
    assert entry["message"] == "call to n8n failed" and "ValueError: boom" in entry["exception"]
