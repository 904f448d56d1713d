"""JSON log lines (SCHEDULER_LOG_FORMAT=json): one object per line, a fixed set of fields."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# The ids a log line may carry (logger calls pass them with extra=...). Only these and the fixed
# fields are written: whatever else a record holds (arguments, request objects, headers) is not,
# so a secret passed along by accident never reaches the log.
ID_FIELDS = ("trigger_id", "execution_id", "workflow_id", "task_id")


def _current_task_id() -> str | None:
    """The id of the Celery task this process is running, if any (worker log lines outside our calls)."""
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is a runtime dependency
        return None
    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "id", None)


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, the known ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is None and name == "task_id":
                value = _current_task_id()
            if value is not None:
                entry[name] = value if isinstance(value, int) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
