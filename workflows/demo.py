"""The demo target: made-up answers to the calls of the examples in examples/ (``manage.py demo``).

A stand-in for the bot the examples talk to, served by this service at POST
/api/demo-target/<call> while SCHEDULER_DEMO_TARGET is on (by default only with DEBUG), so the
examples run end to end on one machine. It stores nothing and checks no signature. To show the
error paths it fails on purpose when asked through the call's body, which the run's inputs fill:
a body value "fail" gets a 503 (retried by the step, then its error), and the raid target
"nobody" gets no one joining (the raid is called off).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.urls import reverse

from .network import DEMO_ROUTE

# A body value that makes the demo target fail the call (503: the step retries, then fails).
FAIL = "fail"
# The raid target nobody joins for (the raid example's "called off" path).
NOBODY = "nobody"
JOINED = 5

EXAMPLES_DIR = Path(settings.BASE_DIR) / "examples"


@dataclass(frozen=True)
class Example:
    """One example definition as ``manage.py demo`` sets it up."""

    name: str  # the file's stem, e.g. "raid"
    inputs: dict[str, Any]  # the workflow's default inputs: short waits, so a demo run ends in seconds

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / f"{self.name}.json"

    @property
    def workflow_name(self) -> str:
        return f"Example: {self.name}"

    def definition(self, target: str) -> dict[str, Any]:
        """The example's definition with its calls sent to ``target`` (its config.target)."""
        definition = json.loads(self.path.read_text())
        definition["config"] = {**definition.get("config", {}), "target": target}
        return definition


EXAMPLES = (
    Example("stream-start", {"stream": "demo", "warmup_seconds": 5}),
    Example("stream-end", {"stream": "demo"}),
    Example("raid", {"target": "demo", "gather_seconds": 5}),
)


def target_url() -> str:
    """Where workers reach the demo target, e.g. http://127.0.0.1:8000/api/demo-target (the examples
    add /<call>)."""
    return settings.SCHEDULER_PUBLIC_BASE_URL + reverse(DEMO_ROUTE, kwargs={"call": "x"}).rsplit("/", 1)[0]


def answer(call: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The demo target's HTTP status and JSON answer to ``call`` with ``body``."""
    if FAIL in body.values():
        return 503, {"error": f"the demo target fails on purpose: a body value is {FAIL!r}"}
    stream, target = body.get("stream"), body.get("target")
    answers: dict[str, dict[str, Any]] = {
        # stream-start.json
        "announce": {"message_id": 1, "text": f"{stream} starts now"},
        "live": {"live": True, "stream": stream},
        # stream-end.json
        "clips": {"clips": 3, "stream": stream},
        "stats": {"viewers": 42, "peak": 57},
        "recap": {"posted": True},
        # raid.json
        "raid": {"raid": "called", "target": target},
        "joined": {"joined": 0 if target == NOBODY else JOINED},
        "go": {"raid": "started", "target": target},
    }
    return 200, {"call": call, **answers.get(call, {"ok": True})}
