"""schedules.dispatch.publish on a real kombu transport: each attempt reaches its queue as a
run_execution message with its arguments."""

from __future__ import annotations

from kombu import Connection

from schedules import dispatch
from schedules.tasks import run_execution


def test_publish__messages_reach_their_queues_as_run_execution():
    """Attempts go to their priority's queue, in order, as run_execution(execution_id, attempt), with a
    countdown as an ETA; a refused publish reports the error and counts nothing as sent."""
    attempts = [
        dispatch.Attempt("e-1", 1, "high"),
        dispatch.Attempt("e-2", 1, "normal", countdown=30),
        dispatch.Attempt("e-3", 2, "normal"),
    ]
    with Connection("memory://") as connection:
        queues = {name: connection.SimpleQueue(name) for name in ("high", "normal")}
        sent, error = dispatch.publish(attempts, producer=connection.Producer())
        assert (sent, error) == (3, None)
        received = {name: [] for name in queues}
        for name, queue in queues.items():
            while queue.qsize():
                message = queue.get(timeout=1)
                received[name].append((message.headers["task"], message.payload[1], message.headers["eta"]))
                message.ack()
    assert [(task, kwargs) for task, kwargs, _ in received["high"]] == [
        (run_execution.name, {"execution_id": "e-1", "attempt": 1})
    ]
    assert [kwargs for _, kwargs, _ in received["normal"]] == [
        {"execution_id": "e-2", "attempt": 1},
        {"execution_id": "e-3", "attempt": 2},
    ]
    assert received["normal"][0][2] is not None and received["normal"][1][2] is None
    assert received["high"][0][2] is None


def test_publish__refused_counts_nothing_sent():
    """A broker that refuses the connection: the error is returned, not raised, and nothing counts as sent."""
    with Connection("redis://127.0.0.1:1/0", connect_timeout=0.5) as connection:
        sent, error = dispatch.publish([dispatch.Attempt("e-1", 1)], producer=connection.Producer())
    assert sent == 0 and error is not None
