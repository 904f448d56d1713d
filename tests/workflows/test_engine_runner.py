"""The engine's runner and actions: steps run in order, state is saved after each, waits are held in
the database, http steps go through the guarded client with a stable Idempotency-Key, and a step
whose worker died is taken again. Tasks are called directly (no eager mode); http steps call a real
server on 127.0.0.1 (the e2e harness's Endpoint)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from tests.e2e.harness import Reply
from tests.factories import WorkflowFactory
from workflows import services, tasks
from workflows.engine import runner
from workflows.models import RunStatus, StepStatus, WorkflowRun

EXECUTION = {"execution_id": "e-1", "scheduled_for": "2027-01-04T09:00:00+00:00", "trigger_id": 7}


def start(definition, *, inputs=None, user=None, key="k-1", **workflow_fields):
    workflow = WorkflowFactory(
        endpoint_url="", definition=definition, **({"owner": user} if user else {}), **workflow_fields
    )
    run, created = services.run_record(
        workflow=workflow, idempotency_key=key, payload={**EXECUTION, "inputs": inputs or {}}
    )
    assert created
    return run


def drive(run, *, now=None, limit=50):
    """Advance until the runner has nothing to do now (finished, waiting, or a retry not yet due)."""
    for _ in range(limit):
        if runner.run_advance(run_id=run.pk, now=now) == "nothing to do":
            break
    run.refresh_from_db()
    return run


def path(run):
    return [(step.step_id, step.attempt, step.status) for step in run.steps.order_by("seq", "attempt")]


def output(run, step_id):
    return json.loads(run.steps.filter(step_id=step_id).order_by("-attempt").first().output_excerpt)


def sequence(*steps, **extra):
    return {"type": "sequence", "steps": list(steps), **extra}


def test_run_record__definition_starts_the_engine_on_the_first_step(db):
    """A run of a workflow with a definition is running on its first step; a repeat starts nothing."""
    run = start(sequence({"id": "a", "action": "log", "params": {"message": "hi"}}))
    assert (run.status, run.current_step, run.step_seq) == (RunStatus.RUNNING, "a", 1)
    assert run.context["execution"]["scheduled_for"] == EXECUTION["scheduled_for"]
    again, created = services.run_record(workflow=run.workflow, idempotency_key="k-1", payload={})
    assert (again.pk, created) == (run.pk, False)


def test_run_record__a_definition_that_no_longer_passes_fails_the_run_not_the_request(db):
    """A stored definition that today's checks refuse (e.g. an action since renamed) fails the run with the reason."""
    workflow = WorkflowFactory(endpoint_url="")
    broken = sequence({"id": "a", "action": "teleport", "params": {}})
    type(workflow).objects.filter(pk=workflow.pk).update(definition=broken)  # as if saved by an older release
    workflow.refresh_from_db()
    run, created = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": {}})
    assert created and run.status == RunStatus.FAILED
    assert run.error.startswith("the definition cannot run: definition.steps[0].action: 'teleport' is not one of")
    assert runner.run_advance(run_id=run.pk) == "nothing to do"


def test_run_record__no_definition_only_records(workflow):
    """Without a definition nothing runs: the run is recorded as before."""
    run, _ = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": {}})
    assert run.status == RunStatus.RECORDED
    assert runner.run_advance(run_id=run.pk) == "nothing to do"


def test_sequence__set_log_and_variables_flow_from_step_to_step(db):
    """Each step's output is saved and the next one reads it; a lone variable keeps its JSON type."""
    run = start(
        sequence(
            {"id": "pick", "action": "set", "params": {"values": {"n": "${inputs.count}", "who": "${inputs.who}"}}},
            {"id": "say", "action": "log", "params": {"message": "${steps.pick.output.who} x ${steps.pick.output.n}"}},
            {"id": "slot", "action": "set", "params": {"values": {"at": "${execution.scheduled_for}", "d": "${date}"}}},
        ),
        inputs={"count": 3, "who": "ana"},
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("pick", 1, "succeeded"), ("say", 1, "succeeded"), ("slot", 1, "succeeded")]
    assert run.context["steps"]["pick"]["output"] == {"n": 3, "who": "ana"}
    assert output(run, "say") == {"message": "ana x 3"}
    assert output(run, "slot")["at"] == EXECUTION["scheduled_for"]
    assert output(run, "slot")["d"] == timezone.now().date().isoformat()
    say = run.steps.get(step_id="say")
    assert say.input == {"message": "ana x 3"}
    assert say.started_at <= say.finished_at


def test_sequence__missing_variable_fails_the_step_naming_it(db):
    """A missing variable is the step's error, with its name; error_policy stop ends the run there."""
    run = start(
        sequence(
            {"id": "a", "action": "log", "params": {"message": "${inputs.nope}"}},
            {"id": "b", "action": "log", "params": {"message": "never"}},
        )
    )
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert run.error == "step a: variable ${inputs.nope} is missing"
    assert path(run) == [("a", 1, "failed")]


def test_sequence__error_policy_continue_runs_the_rest(db):
    """With continue, a failed step is recorded and the next runs."""
    run = start(
        sequence(
            {"id": "a", "action": "log", "params": {"message": "${inputs.nope}"}},
            {"id": "b", "action": "log", "params": {"message": "still here"}},
            error_policy="continue",
        )
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("a", 1, "failed"), ("b", 1, "succeeded")]


@pytest.mark.parametrize(
    ("expression", "inputs", "expected"),
    [
        ({"eq": ["${inputs.a}", 1]}, {"a": 1}, True),
        ({"ne": ["${inputs.a}", 1]}, {"a": 1}, False),
        ({"gt": ["${inputs.a}", 1]}, {"a": 2}, True),
        ({"lt": ["${inputs.a}", 1]}, {"a": 2}, False),
        ({"in": ["${inputs.a}", ["x", "y"]]}, {"a": "y"}, True),
        ({"exists": "${inputs.a}"}, {}, False),
        ({"exists": "inputs.a"}, {"a": None}, True),
        ({"and": [{"eq": [1, 1]}, {"not": {"exists": "${inputs.b}"}}]}, {}, True),
        ({"or": [{"eq": [1, 2]}, {"gt": ["b", "a"]}]}, {}, True),
    ],
)
def test_condition__operators(db, expression, inputs, expected):
    """eq, ne, gt, lt, in, exists, and, or, not: data, no eval; the event is "true" or "false"."""
    run = start(
        {
            "type": "state_machine",
            "initial_state": "check",
            "states": [
                {
                    "id": "check",
                    "action": "condition",
                    "params": {"if": expression},
                    "transitions": {"true": "yes", "false": "no"},
                },
                {"id": "yes", "terminal": "succeeded"},
                {"id": "no", "terminal": "failed"},
            ],
        },
        inputs=inputs,
    )
    run = drive(run)
    assert output(run, "check") == {"result": expected}
    assert run.current_step == ("yes" if expected else "no")
    assert run.status == (RunStatus.SUCCEEDED if expected else RunStatus.FAILED)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ({"in": [["a"], {"a": 1}]}, 'in: only text can be looked for in text or an object\'s keys, not ["a"]'),
        ({"in": [1, 5]}, "in: the right side must be a list, a string or an object, not 5"),
    ],
)
def test_condition__in_with_the_wrong_types_is_a_step_error(db, expression, error):
    """in with a right side that holds nothing, or a list looked for in an object, is the step's error."""
    definition = sequence({"id": "check", "action": "condition", "params": {"if": expression}})
    run = drive(start(definition))
    assert run.status == RunStatus.FAILED
    assert run.steps.get(step_id="check").error == error


def test_condition__comparing_a_number_with_text_is_a_step_error(db):
    """gt between a number and a string is an error on the step (the error transition), not a crash."""
    run = start(
        {
            "type": "state_machine",
            "initial_state": "check",
            "states": [
                {
                    "id": "check",
                    "action": "condition",
                    "params": {"if": {"gt": ["${inputs.a}", 1]}},
                    "transitions": {"success": "yes", "error": "no"},
                },
                {"id": "yes", "terminal": "succeeded"},
                {"id": "no", "terminal": "failed"},
            ],
        },
        inputs={"a": "ten"},
    )
    run = drive(run)
    assert run.current_step == "no"
    assert run.steps.get(step_id="check").error == 'gt: cannot compare "ten" with 1'
    assert run.error == 'ended in state no after check: gt: cannot compare "ten" with 1'
    # The terminal state's row in the history says how the run ended, and why.
    terminal = run.steps.get(step_id="no")
    assert (terminal.status, terminal.error) == (StepStatus.FAILED, run.error)


def test_state_machine__a_succeeded_terminal_state_reads_succeeded_in_the_history(db):
    run = drive(
        start(
            {
                "type": "state_machine",
                "initial_state": "hello",
                "states": [
                    {"id": "hello", "action": "log", "params": {"message": "hi"}, "transitions": {"success": "end"}},
                    {"id": "end", "terminal": "succeeded"},
                ],
            }
        )
    )
    assert run.status == RunStatus.SUCCEEDED
    assert list(run.steps.order_by("seq").values_list("step_id", "status", "error")) == [
        ("hello", StepStatus.SUCCEEDED, ""),
        ("end", StepStatus.SUCCEEDED, ""),
    ]


def test_state_machine__max_transitions_stops_a_loop(db):
    """A loop ends when the guard is reached, with a clear error."""
    run = start(
        {
            "type": "state_machine",
            "initial_state": "again",
            "max_transitions": 3,
            "states": [
                {
                    "id": "again",
                    "action": "log",
                    "params": {"message": "x"},
                    "transitions": {"success": "again", "error": "end"},
                },
                {"id": "end", "terminal": "succeeded"},
            ],
        }
    )
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert run.error == "more than 3 transitions (max_transitions): a loop?"
    assert len(path(run)) == 4


def test_state_machine__no_transition_for_the_outcome_fails_the_run(db):
    """A state without a transition for what happened ends the run as failed, saying which event."""
    run = start(
        {
            "type": "state_machine",
            "initial_state": "a",
            "states": [
                {
                    "id": "a",
                    "action": "log",
                    "params": {"message": "${inputs.nope}"},
                    "transitions": {"success": "end"},
                },
                {"id": "end", "terminal": "succeeded"},
            ],
        }
    )
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert run.error == "state a: no transition on 'error': variable ${inputs.nope} is missing"


def test_wait__is_held_in_the_database_and_resumed_by_recovery_when_due(db):
    """A wait sets wake_at and frees the worker; before it is due nothing runs; after, the recovery
    task sends the run and the next step runs."""
    run = start(
        sequence(
            {"id": "pause", "action": "wait", "params": {"seconds": "${inputs.delay}"}},
            {"id": "after", "action": "log", "params": {"message": "done"}},
        ),
        inputs={"delay": 60},
    )
    now = timezone.now()
    run = drive(run, now=now)
    assert run.status == RunStatus.WAITING
    assert run.step_started_at is None
    assert abs((run.wake_at - now).total_seconds() - 60) < 5
    assert path(run) == [("pause", 1, "waiting")]
    assert runner.runs_recover(now=now + timedelta(seconds=30)) == 0
    assert runner.run_advance(run_id=run.pk, now=now + timedelta(seconds=30)) == "nothing to do"

    later = now + timedelta(seconds=61)
    assert runner.runs_recover(now=later) == 1
    assert runner.runs_recover(now=later) == 0  # sent once, not once per look
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("pause", 1, "succeeded"), ("after", 1, "succeeded")]


def test_wait__until_a_time(db):
    """until: an ISO time (here from an input); a past time does not wait."""
    until = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    run = start(
        sequence({"id": "w", "action": "wait", "params": {"until": "${inputs.at}"}}),
        inputs={"at": until.isoformat().replace("+00:00", "Z")},
    )
    run = drive(run, now=timezone.now())
    assert run.wake_at == until
    past = start(sequence({"id": "w", "action": "wait", "params": {"until": "2001-01-01T00:00:00+00:00"}}), key="k-2")
    past = drive(past)
    assert past.status == RunStatus.SUCCEEDED


def test_http__calls_signed_with_a_stable_key_and_outputs_the_answer(db, server):
    """The http step signs with the workflow's secret, sends its body, and outputs status and JSON body."""
    server.default = Reply(status=200, body={"ok": True, "items": [{"id": 7}]})
    run = start(
        sequence(
            {
                "id": "call",
                "action": "http",
                "params": {
                    "url": server.url,
                    "body": {"who": "${inputs.who}"},
                    "headers": {"Authorization": "Bearer t0k"},
                },
            },
            {"id": "use", "action": "set", "params": {"values": {"first": "${steps.call.output.body.items.0.id}"}}},
        ),
        inputs={"who": "ana"},
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.context["steps"]["call"]["output"] == {"status": 200, "body": {"ok": True, "items": [{"id": 7}]}}
    assert output(run, "use") == {"first": 7}
    (call,) = server.calls
    assert call.body == {"who": "ana"}
    assert call.headers["authorization"] == "Bearer t0k"
    assert run.steps.get(step_id="call").input["headers"] == {"Authorization": "(hidden)"}  # not in the history
    assert call.headers["idempotency-key"] == f"{run.pk}:1:call"
    Webhook(run.workflow.secret).verify(call.raw, call.headers)  # raises if the signature is wrong


def test_http__retryable_failure_is_retried_after_a_backoff_with_the_same_key(db, server):
    """A 503 is retried (held in wake_at, not a sleeping worker) with the same Idempotency-Key."""
    server.script = [Reply(status=503)]
    run = start(sequence({"id": "call", "action": "http", "params": {"url": server.url, "retries": 2}}))
    now = timezone.now()
    run = drive(run, now=now)
    assert run.status == RunStatus.RUNNING
    assert run.wake_at is not None and run.wake_at > now
    assert path(run) == [("call", 1, "failed")]
    run = drive(run, now=run.wake_at + timedelta(seconds=1))
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("call", 1, "failed"), ("call", 2, "succeeded")]
    assert {call.headers["idempotency-key"] for call in server.calls} == {f"{run.pk}:1:call"}


def test_http__final_error_and_timeout_take_their_transitions(db, server):
    """A 404 takes the error transition; a call past its timeout takes the timeout transition."""
    server.script = [Reply(status=404), Reply(status=200, delay=3)]
    machine = {
        "type": "state_machine",
        "initial_state": "first",
        "states": [
            {
                "id": "first",
                "action": "http",
                "params": {"url": server.url},
                "transitions": {"success": "end", "error": "second"},
            },
            {
                "id": "second",
                "action": "http",
                "params": {"url": server.url, "timeout_seconds": 1, "retries": 0},
                "transitions": {"success": "end", "error": "end", "timeout": "slow"},
            },
            {"id": "slow", "terminal": "failed"},
            {"id": "end", "terminal": "succeeded"},
        ],
    }
    run = drive(start(machine))
    assert [step[0] for step in path(run)] == ["first", "second", "slow"]
    assert run.steps.get(step_id="first").error == "HTTP 404 Not Found"
    assert run.steps.get(step_id="second").error == "timed out after 1.0s"
    assert run.status == RunStatus.FAILED


def test_http__refused_target_fails_the_step(db, settings):
    """The SSRF guard applies: a private address is refused unless allowed."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = []
    run = drive(start(sequence({"id": "call", "action": "http", "params": {"url": "http://10.1.2.3/x", "retries": 0}})))
    assert run.status == RunStatus.FAILED
    assert "refused" in run.error


def test_claim__a_step_held_by_a_live_worker_is_not_run_twice(transactional_db, server):
    """While one worker holds the step (its lease lasts), another message for the run does nothing."""
    held = threading.Event()
    server.script = [Reply(status=200, hold=held)]
    run = start(sequence({"id": "call", "action": "http", "params": {"url": server.url}}))

    def worker():
        try:
            runner.run_advance(run_id=run.pk)
        finally:
            connection.close()

    first = threading.Thread(target=worker)
    first.start()
    try:
        server.wait_for_calls(1, timeout=10)
        assert runner.run_advance(run_id=run.pk) == "nothing to do"
    finally:
        held.set()
        first.join(timeout=10)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert len(server.calls) == 1


def test_recovery__a_step_whose_worker_died_runs_again_with_the_same_key(db, server):
    """A claimed step never recorded (its worker was killed) is taken again once its lease runs out;
    the dead attempt is recorded as lost, completed steps are not run again."""
    run = start(
        sequence(
            {"id": "before", "action": "set", "params": {"values": {"x": 1}}},
            {"id": "call", "action": "http", "params": {"url": server.url, "timeout_seconds": 5}},
        )
    )
    now = timezone.now()
    assert runner.run_advance(run_id=run.pk, now=now) == "running"
    claim = runner._claim(run.pk, now)  # the worker takes the step, then dies before calling
    assert claim is not None
    assert runner.runs_recover(now=now + timedelta(seconds=3)) == 0  # its lease still runs
    after = now + timedelta(seconds=5 + 3 + 1)  # the step's timeout plus the grace
    assert runner.runs_recover(now=after) == 1
    run = drive(run, now=after)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("before", 1, "succeeded"), ("call", 1, "failed"), ("call", 2, "succeeded")]
    assert run.steps.get(step_id="call", attempt=1).error == "worker lost during attempt 1"
    assert [call.headers["idempotency-key"] for call in server.calls] == [f"{run.pk}:2:call"]


def test_tasks__advance_and_recover_are_thin(db):
    """The tasks take ids and return a summary."""
    run = start(sequence({"id": "a", "action": "log", "params": {"message": "hi"}}))
    assert tasks.advance_run(str(run.pk)) == {"run_id": str(run.pk), "status": "succeeded"}
    assert tasks.recover_runs() == {"sent": 0}
    assert WorkflowRun.objects.get(pk=run.pk).steps.get().status == StepStatus.SUCCEEDED


def test_notify__email_and_signed_webhook(db, server, mailoutbox):
    """notify sends its message by e-mail and to a webhook (signed, with the run's ids); variables filled in."""
    run = drive(
        start(
            sequence(
                {
                    "id": "tell",
                    "action": "notify",
                    "params": {
                        "email": ["ops@example.com", "${inputs.owner}"],
                        "subject": "Stream ${inputs.stream}",
                        "message": "started at ${execution.scheduled_for}",
                        "webhook": server.url,
                    },
                }
            ),
            inputs={"owner": "ana@example.com", "stream": "tuesday"},
        )
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert output(run, "tell") == {"webhook": 200, "email": 2}
    (mail,) = mailoutbox
    assert (mail.subject, mail.body, mail.to) == (
        "Stream tuesday",
        f"started at {EXECUTION['scheduled_for']}",
        ["ops@example.com", "ana@example.com"],
    )
    (call,) = server.calls
    assert call.body == {
        "subject": "Stream tuesday",
        "message": f"started at {EXECUTION['scheduled_for']}",
        "run_id": str(run.pk),
        "workflow_id": run.workflow_id,
        "step": "tell",
    }
    Webhook(run.workflow.secret).verify(call.raw, call.headers)


def test_notify__webhook_refused_fails_the_step_and_sends_no_email(db, server, mailoutbox):
    """A webhook that answers 404 fails the step; the e-mail, sent only after it, is not sent."""
    server.default = Reply(status=404)
    run = drive(
        start(
            sequence(
                {
                    "id": "tell",
                    "action": "notify",
                    "params": {"email": ["a@example.com"], "message": "m", "webhook": server.url},
                }
            )
        )
    )
    assert run.status == RunStatus.FAILED
    assert run.error == "step tell: HTTP 404 Not Found"
    assert mailoutbox == []


def notify_both(server):
    params = {"email": ["a@example.com"], "message": "m", "webhook": server.url}
    return sequence({"id": "tell", "action": "notify", "params": params})


# A notify attempt's lease: its webhook's and the mail server's time, plus the test settings' grace.
NOTIFY_LEASE = timedelta(seconds=40 + 3 + 1)


def test_notify__an_attempt_after_the_worker_died_repeats_no_channel_already_done(db, server, mailoutbox):
    """The worker sent both and died before recording the step: the next attempt sends neither again
    and the step succeeds with what was done; the channels' record is dropped once the step ends."""
    run = start(notify_both(server))
    now = timezone.now()
    claim = runner._claim(run.pk, now)
    runner._perform(claim)  # both channels go out; the worker is killed before _record
    assert (len(server.calls), len(mailoutbox)) == (1, 1)
    run.refresh_from_db()
    assert run.context["progress"] == {"1": {"webhook": 200, "email": 1}}

    later = now + NOTIFY_LEASE
    assert runner.runs_recover(now=later) == 1
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert path(run) == [("tell", 1, "failed"), ("tell", 2, "succeeded")]
    assert output(run, "tell") == {"webhook": 200, "email": 1}
    assert (len(server.calls), len(mailoutbox)) == (1, 1)
    assert "progress" not in run.context


def test_notify__killed_between_webhook_and_email_sends_only_the_email_next_time(db, server, mailoutbox, monkeypatch):
    """The webhook was done and recorded, the worker died before the e-mail: the next attempt sends the
    e-mail only."""
    from workflows.engine import actions

    run = start(notify_both(server))
    now = timezone.now()
    claim = runner._claim(run.pk, now)

    def killed(*args, **kwargs):
        raise SystemExit("SIGKILL")  # not an Exception: nothing in the runner catches it, as with a kill

    monkeypatch.setattr(actions, "send_mail", killed)
    with pytest.raises(SystemExit):
        runner._perform(claim)
    monkeypatch.undo()
    assert (len(server.calls), len(mailoutbox)) == (1, 0)

    later = now + NOTIFY_LEASE
    runner.runs_recover(now=later)
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (len(server.calls), len(mailoutbox)) == (1, 1)
    assert output(run, "tell") == {"webhook": 200, "email": 1}


def test_notify__an_attempt_that_lost_its_step_stops_before_the_email(db, server, mailoutbox, monkeypatch):
    """The run was cancelled while the webhook was called: the attempt cannot record it, so it stops
    there and sends no e-mail."""
    from workflows.engine import actions

    run = start(notify_both(server))
    claim = runner._claim(run.pk, timezone.now())
    call_webhook = actions._signed_call

    def cancelled_meanwhile(*args, **kwargs):
        outcome = call_webhook(*args, **kwargs)
        services.run_cancel(run=run, reason="enough")
        return outcome

    monkeypatch.setattr(actions, "_signed_call", cancelled_meanwhile)
    _params, outcome = runner._perform(claim)
    assert (outcome.status, outcome.error) == ("failed", "stopped: this attempt no longer holds the step")
    assert (len(server.calls), mailoutbox) == (1, [])
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "progress" not in run.context


def test_notify__needs_an_address_or_a_webhook():
    """Without a webhook, e-mail addresses are required, and they must look like addresses."""
    from workflows.engine.definitions import definition_problems

    assert definition_problems(sequence({"id": "t", "action": "notify", "params": {"message": "m"}})) == [
        "definition.steps[0].params: 'email' is a required property"
    ]
    assert definition_problems(
        sequence({"id": "t", "action": "notify", "params": {"message": "m", "email": ["not-an-address"]}})
    )[0].startswith("definition.steps[0].params.email[0]: 'not-an-address' does not match")


BRANCHING = {
    "type": "state_machine",
    "initial_state": "size",
    "states": [
        {
            "id": "size",
            "action": "branch",
            "params": {
                "cases": [
                    {"if": {"gt": ["${inputs.n}", 10]}, "event": "big"},
                    {"if": {"gt": ["${inputs.n}", 5]}, "event": "medium"},
                ],
                "default": "small",
            },
            "transitions": {"big": "b", "medium": "m", "small": "s"},
        },
        {"id": "b", "terminal": "succeeded"},
        {"id": "m", "terminal": "succeeded"},
        {"id": "s", "terminal": "succeeded"},
    ],
}


@pytest.mark.parametrize(("n", "end"), [(20, "b"), (7, "m"), (1, "s")])
def test_branch__the_first_case_that_holds_picks_the_transition(db, n, end):
    """Cases are tried in order; none holding takes the default's transition."""
    run = drive(start(BRANCHING, inputs={"n": n}))
    assert (run.status, run.current_step) == (RunStatus.SUCCEEDED, end)
    assert output(run, "size") == {"event": {"b": "big", "m": "medium", "s": "small"}[end]}


def test_branch__every_way_needs_a_transition():
    """On save, a case's event (or the default) with no transition is named, unless success catches it."""
    import copy

    from workflows.engine.definitions import definition_problems

    broken = copy.deepcopy(BRANCHING)
    del broken["states"][0]["transitions"]["medium"]
    assert definition_problems(broken) == [
        "definition.states[0].params.cases[1].event: the event 'medium' has no transition; add transitions.medium"
    ]
    broken["states"][0]["transitions"]["success"] = "m"
    assert definition_problems(broken) == []
