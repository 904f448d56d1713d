"""History statistics (running counters, p95 from a histogram) and retention pruning."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from schedules import selectors, services, tasks
from schedules.models import (
    DURATION_BUCKETS_MS,
    Execution,
    ExecutionOrigin,
    ExecutionStats,
    ExecutionStatus,
    Trigger,
    duration_bucket,
    histogram_quantile,
)
from tests.factories import TriggerFactory, WorkflowFactory

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
FINISHED = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)


def _execution(
    trigger, *, at, status=ExecutionStatus.SUCCEEDED, duration_ms=None, origin=ExecutionOrigin.SCHEDULE, **extra
):
    """An execution of ``trigger`` for slot ``at``; finished ones finished a second after it."""
    extra.setdefault("workflow", trigger.workflow)
    extra.setdefault("finished_at", at + timedelta(seconds=1) if status in FINISHED else None)
    return Execution.objects.create(
        trigger=trigger, scheduled_for=at, status=status, duration_ms=duration_ms, origin=origin, created_at=at, **extra
    )


def _recorded(trigger, **kwargs):
    execution = _execution(trigger, **kwargs)
    services.stats_record(execution=execution)
    return execution


def _hours_ago(hours):
    return NOW - timedelta(hours=hours)


def _set_retention(trigger, **fields):
    Trigger.objects.filter(pk=trigger.pk).update(**fields)


@pytest.fixture
def retention(settings):
    """Retention settings with no limits; each test turns on the one it checks."""
    settings.SCHEDULER_KEEP_SUCCEEDED = 0
    settings.SCHEDULER_KEEP_FAILED = 0
    settings.SCHEDULER_RETENTION_DAYS = 0
    return settings


# --- stats_record ---------------------------------------------------------------------------------


def test_stats_record__counts_succeeded_with_duration(trigger):
    """A succeeded execution adds to total, succeeded and the duration figures."""
    _recorded(trigger, at=_hours_ago(1), duration_ms=250)
    stats = ExecutionStats.objects.get(trigger=trigger)
    assert (stats.total, stats.succeeded, stats.failed, stats.skipped) == (1, 1, 0, 0)
    assert (stats.duration_count, stats.duration_sum_ms, stats.duration_max_ms) == (1, 250, 250)
    assert stats.duration_histogram == {duration_bucket(250): 1}
    assert stats.workflow_id == trigger.workflow_id


def test_stats_record__counts_failed_with_duration(trigger):
    """A failed execution adds to total, failed and the duration figures."""
    _recorded(trigger, at=_hours_ago(1), status=ExecutionStatus.FAILED, duration_ms=5000)
    stats = ExecutionStats.objects.get(trigger=trigger)
    assert (stats.total, stats.succeeded, stats.failed, stats.skipped) == (1, 0, 1, 0)
    assert (stats.duration_count, stats.duration_sum_ms) == (1, 5000)


def test_stats_record__counts_skipped_without_duration(trigger):
    """A skipped execution adds to total and skipped and leaves the durations alone."""
    _recorded(trigger, at=_hours_ago(1), status=ExecutionStatus.SKIPPED)
    stats = ExecutionStats.objects.get(trigger=trigger)
    assert (stats.total, stats.succeeded, stats.failed, stats.skipped) == (1, 0, 0, 1)
    assert (stats.duration_count, stats.duration_sum_ms, stats.duration_histogram) == (0, 0, {})


def test_stats_record__adds_to_the_existing_row(trigger):
    """Recording twice increments one row (F() updates), it does not overwrite it."""
    _recorded(trigger, at=_hours_ago(2), duration_ms=100)
    _recorded(trigger, at=_hours_ago(1), duration_ms=300)
    stats = ExecutionStats.objects.get(trigger=trigger)
    assert (stats.total, stats.succeeded, stats.duration_count, stats.duration_sum_ms) == (2, 2, 2, 400)
    assert stats.duration_max_ms == 300
    assert sum(stats.duration_histogram.values()) == 2


def test_stats_record__ignores_fallback_executions(trigger):
    """A fallback run is not counted: its slot already counted as failed."""
    failed = _recorded(trigger, at=_hours_ago(1), status=ExecutionStatus.FAILED, duration_ms=10)
    fallback_workflow = WorkflowFactory(owner=trigger.owner)
    _recorded(
        trigger,
        at=failed.scheduled_for,
        workflow=fallback_workflow,
        origin=ExecutionOrigin.FALLBACK,
        fallback_of=failed,
        duration_ms=10,
    )
    assert list(ExecutionStats.objects.values_list("workflow_id", "total", "failed")) == [(trigger.workflow_id, 1, 1)]


def test_stats_record__rejects_unfinished_executions(trigger):
    """Only finished executions can be counted."""
    execution = _execution(trigger, at=_hours_ago(1), status=ExecutionStatus.RUNNING)
    with pytest.raises(ValueError, match="only finished"):
        services.stats_record(execution=execution)
    assert not ExecutionStats.objects.exists()


def test_stats_record__keeps_workflows_apart_when_a_trigger_moves(trigger):
    """After a trigger moves to another workflow, each workflow counts only the calls it got."""
    _recorded(trigger, at=_hours_ago(2))
    other = WorkflowFactory(owner=trigger.owner)
    Trigger.objects.filter(pk=trigger.pk).update(workflow=other)
    trigger.refresh_from_db()
    _recorded(trigger, at=_hours_ago(1), status=ExecutionStatus.FAILED)
    assert selectors.trigger_stats(trigger, now=NOW)["total"] == 2
    assert selectors.workflow_stats(other, now=NOW)["failed"] == 1
    assert selectors.workflow_stats(other, now=NOW)["succeeded"] == 0


# --- histogram ------------------------------------------------------------------------------------


def _fold_queries(triggers) -> int:
    """Finish executions of each trigger (two of the first, one each of the rest), fold them, and
    return how many statements the fold took; every row must then be exact."""
    expected = {}
    for index, trigger in enumerate(triggers):
        durations = [120, 4000] if index == 0 else [10 + index]
        for n, duration in enumerate(durations):
            status = ExecutionStatus.FAILED if (index + n) % 3 == 0 else ExecutionStatus.SUCCEEDED
            _execution(trigger, at=_hours_ago(n + 1), status=status, duration_ms=duration)
        expected[trigger.pk] = durations
    with CaptureQueriesContext(connection) as captured:
        assert services.stats_fold() == sum(map(len, expected.values()))
    for trigger in triggers:
        stats = ExecutionStats.objects.get(trigger=trigger)
        durations = expected[trigger.pk]
        assert (stats.total, stats.duration_count, stats.duration_sum_ms, stats.duration_max_ms) == (
            len(durations),
            len(durations),
            sum(durations),
            max(durations),
        )
        assert stats.succeeded + stats.failed == len(durations)
        assert sum(stats.duration_histogram.values()) == len(durations)
        assert set(stats.duration_histogram) == {duration_bucket(d) for d in durations}
    return len(captured.captured_queries)


def test_stats_fold__statements_do_not_grow_with_the_triggers(workflow):
    """A fold writes every trigger's stats row in a fixed number of statements (rows made, locked
    and read, written back), each exact; one by one it was three or four per trigger."""
    few = _fold_queries(TriggerFactory.create_batch(2, workflow=workflow))
    many = _fold_queries(TriggerFactory.create_batch(40, workflow=workflow))
    assert many == few


def test_stats_fold__adds_to_rows_that_exist_and_leaves_other_workflows_rows(trigger):
    """A second fold adds to the counts and the histogram already there; the trigger's row for
    the workflow it called before is locked with the others but left as it was."""
    _recorded(trigger, at=_hours_ago(5), duration_ms=50)
    old = trigger.workflow
    trigger.workflow = WorkflowFactory(owner=trigger.owner)
    trigger.save()
    before = ExecutionStats.objects.get(trigger=trigger, workflow=old)
    _execution(trigger, at=_hours_ago(3), duration_ms=50)
    _execution(trigger, at=_hours_ago(2), duration_ms=70, status=ExecutionStatus.FAILED)
    assert services.stats_fold() == 2
    assert services.stats_fold() == 0
    new = ExecutionStats.objects.get(trigger=trigger, workflow=trigger.workflow)
    assert (new.total, new.succeeded, new.failed, new.duration_max_ms) == (2, 1, 1, 70)
    assert new.duration_histogram == {duration_bucket(50): 1, duration_bucket(70): 1}
    after = ExecutionStats.objects.get(trigger=trigger, workflow=old)
    assert (after.total, after.duration_histogram, after.updated_at) == (
        before.total,
        before.duration_histogram,
        before.updated_at,
    )
    _execution(trigger, at=_hours_ago(1), duration_ms=50)
    assert services.stats_fold() == 1
    new.refresh_from_db()
    assert (new.total, new.duration_histogram) == (3, {duration_bucket(50): 2, duration_bucket(70): 1})


def test_duration_bucket__inclusive_upper_bounds():
    """A duration goes in the first bucket whose upper bound it does not exceed; longer ones in inf."""
    assert duration_bucket(0) == "10"
    assert duration_bucket(10) == "10"
    assert duration_bucket(11) == "12"
    assert duration_bucket(DURATION_BUCKETS_MS[-1]) == str(DURATION_BUCKETS_MS[-1])
    assert duration_bucket(DURATION_BUCKETS_MS[-1] + 1) == "inf"


def test_duration_buckets__each_at_most_a_fifth_wider_than_the_last():
    """Buckets above the first are at most 25% wider than their lower bound (about +-10% around the middle)."""
    pairs = zip(DURATION_BUCKETS_MS, DURATION_BUCKETS_MS[1:], strict=False)
    assert all(upper / lower <= 1.25 for lower, upper in pairs)
    assert DURATION_BUCKETS_MS[-1] > 60_000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_quantile__p95_close_to_exact(seed):
    """The p95 read from the histogram is within 10% of the exact p95 of the sample."""
    rng = random.Random(seed)
    sample = [int(rng.lognormvariate(math.log(800), 0.9)) for _ in range(2000)]
    histogram: dict[str, int] = {}
    for duration in sample:
        key = duration_bucket(duration)
        histogram[key] = histogram.get(key, 0) + 1
    exact = sorted(sample)[math.ceil(0.95 * len(sample)) - 1]
    estimate = histogram_quantile(histogram, 0.95, max_ms=max(sample))
    assert abs(estimate - exact) / exact <= 0.10


def test_histogram_quantile__overflow_bucket_closed_by_longest():
    """Durations past the last bucket are read up to the longest one seen, never beyond it."""
    assert histogram_quantile({"inf": 4}, 0.95, max_ms=90_000) <= 90_000
    assert histogram_quantile({"inf": 4}, 0.95, max_ms=90_000) > DURATION_BUCKETS_MS[-1]
    assert histogram_quantile({"10": 1, "12": 1}, 0.95, max_ms=11) == 11


def test_histogram_quantile__empty_is_none():
    """No durations: no quantile."""
    assert histogram_quantile({}, 0.95) is None


# --- selectors ------------------------------------------------------------------------------------


def test_trigger_stats__figures(trigger):
    """trigger_stats reports counts, success rate, durations, last statuses (newest first) and next runs."""
    _recorded(trigger, at=_hours_ago(5), duration_ms=100)
    _recorded(trigger, at=_hours_ago(4), duration_ms=300)
    _recorded(trigger, at=_hours_ago(3), status=ExecutionStatus.FAILED, duration_ms=500)
    _recorded(trigger, at=_hours_ago(2), status=ExecutionStatus.SKIPPED)
    _execution(trigger, at=_hours_ago(1), status=ExecutionStatus.RUNNING)

    figures = selectors.trigger_stats(trigger, last=3, now=NOW)

    assert (figures["total"], figures["succeeded"], figures["failed"], figures["skipped"]) == (4, 2, 1, 1)
    assert figures["success_rate"] == pytest.approx(2 / 3)
    assert figures["avg_duration_ms"] == pytest.approx(300)
    assert 400 <= figures["p95_duration_ms"] <= 500
    assert figures["last_statuses"] == ["running", "skipped", "failed"]
    assert figures["next_runs"] == [datetime(2026, 3, day, 9, 0, tzinfo=UTC) for day in (3, 4, 5, 6, 9)]


def test_trigger_stats__without_executions(trigger):
    """A trigger that never ran has zero counts and no rate or durations."""
    figures = selectors.trigger_stats(trigger, now=NOW)
    assert (figures["total"], figures["success_rate"], figures["avg_duration_ms"], figures["p95_duration_ms"]) == (
        0,
        None,
        None,
        None,
    )
    assert figures["last_statuses"] == []


def test_trigger_stats__paused_trigger_has_no_next_runs(trigger):
    """A paused trigger lists no upcoming runs."""
    services.trigger_pause(trigger=trigger)
    trigger.refresh_from_db()
    assert selectors.trigger_stats(trigger, now=NOW)["next_runs"] == []


def test_trigger_stats__next_runs_stop_at_max_runs(trigger):
    """A trigger with two runs left lists only two upcoming runs."""
    Trigger.objects.filter(pk=trigger.pk).update(max_runs=3, run_count=1)
    trigger.refresh_from_db()
    assert len(selectors.trigger_stats(trigger, now=NOW)["next_runs"]) == 2


def test_workflow_stats__adds_up_its_triggers(workflow, django_assert_max_num_queries):
    """workflow_stats sums its triggers' counters and merges their next runs, in a fixed number of queries."""
    morning = TriggerFactory(workflow=workflow, cron="0 9 * * 1-5")
    evening = TriggerFactory(workflow=workflow, cron="0 18 * * *")
    paused = TriggerFactory(workflow=workflow, cron="0 12 * * *")
    services.trigger_pause(trigger=paused)
    _recorded(morning, at=_hours_ago(30), duration_ms=200)
    _recorded(morning, at=_hours_ago(6), status=ExecutionStatus.FAILED, duration_ms=400)
    _recorded(evening, at=_hours_ago(18), duration_ms=600)
    _recorded(TriggerFactory(), at=_hours_ago(5), duration_ms=9000)  # another workflow's trigger

    with django_assert_max_num_queries(4):
        figures = selectors.workflow_stats(workflow, last=5, now=NOW)

    assert (figures["total"], figures["succeeded"], figures["failed"], figures["skipped"]) == (3, 2, 1, 0)
    assert figures["success_rate"] == pytest.approx(2 / 3)
    assert figures["avg_duration_ms"] == pytest.approx(400)
    assert figures["last_statuses"] == ["failed", "succeeded", "succeeded"]
    assert [(run["at"], run["trigger_id"]) for run in figures["next_runs"]] == [
        (datetime(2026, 3, 2, 18, 0, tzinfo=UTC), evening.pk),
        (datetime(2026, 3, 3, 9, 0, tzinfo=UTC), morning.pk),
        (datetime(2026, 3, 3, 18, 0, tzinfo=UTC), evening.pk),
        (datetime(2026, 3, 4, 9, 0, tzinfo=UTC), morning.pk),
        (datetime(2026, 3, 4, 18, 0, tzinfo=UTC), evening.pk),
    ]


def test_owner_stats__adds_up_every_trigger_of_the_owner_only(workflow, other_user, django_assert_max_num_queries):
    """All of a user's executions: every workflow's triggers counted, another user's left out, the
    not-yet-folded ones included, next runs from the triggers due first; staff see everyone's."""
    morning = TriggerFactory(workflow=workflow, cron="0 9 * * 1-5")
    second_workflow = WorkflowFactory(owner=workflow.owner)
    evening = TriggerFactory(workflow=second_workflow, cron="0 18 * * *")
    _recorded(morning, at=_hours_ago(30), duration_ms=200)
    _recorded(evening, at=_hours_ago(18), status=ExecutionStatus.FAILED, duration_ms=600)
    _execution(evening, at=_hours_ago(2), status=ExecutionStatus.SUCCEEDED, duration_ms=100)  # not folded yet
    theirs = TriggerFactory(workflow=WorkflowFactory(owner=other_user))
    _recorded(theirs, at=_hours_ago(5), duration_ms=9000)

    with django_assert_max_num_queries(6):
        figures = selectors.owner_stats(workflow.owner, last=5, now=NOW)
    assert (figures["total"], figures["succeeded"], figures["failed"]) == (3, 2, 1)
    assert figures["last_statuses"] == ["succeeded", "failed", "succeeded"]
    assert [(run["at"], run["trigger_id"]) for run in figures["next_runs"]][:2] == [
        (datetime(2026, 3, 2, 18, 0, tzinfo=UTC), evening.pk),
        (datetime(2026, 3, 3, 9, 0, tzinfo=UTC), morning.pk),
    ]
    workflow.owner.is_staff = True
    assert selectors.owner_stats(workflow.owner, last=5, now=NOW)["total"] == 4


# --- executions_prune -----------------------------------------------------------------------------


def _statuses(trigger):
    return list(trigger.executions.order_by("-scheduled_for").values_list("status", flat=True))


def test_executions_prune__keeps_last_n_succeeded_per_trigger(trigger, retention):
    """With SCHEDULER_KEEP_SUCCEEDED=2 each trigger keeps its two newest succeeded executions."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 2
    other = TriggerFactory(workflow=trigger.workflow)
    kept = [_execution(trigger, at=_hours_ago(hours)) for hours in (1, 2)]
    for hours in (3, 4, 5):
        _execution(trigger, at=_hours_ago(hours))
    failed = _execution(trigger, at=_hours_ago(6), status=ExecutionStatus.FAILED)
    for hours in (1, 2):
        _execution(other, at=_hours_ago(hours))

    assert services.executions_prune(now=NOW) == 3

    assert set(trigger.executions.all()) == {*kept, failed}
    assert other.executions.count() == 2


def test_executions_prune__keeps_last_n_failed_per_trigger(trigger, retention):
    """With SCHEDULER_KEEP_FAILED=1 only the newest failed execution stays; succeeded ones are untouched."""
    retention.SCHEDULER_KEEP_FAILED = 1
    for hours in (1, 3, 5):
        _execution(trigger, at=_hours_ago(hours), status=ExecutionStatus.FAILED)
    for hours in (2, 4):
        _execution(trigger, at=_hours_ago(hours))

    assert services.executions_prune(now=NOW) == 2

    assert _statuses(trigger) == ["failed", "succeeded", "succeeded"]


def test_executions_prune__skipped_kept_like_succeeded(trigger, retention):
    """Skipped executions are kept up to the succeeded limit, counted on their own."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    for hours in (1, 2, 3):
        _execution(trigger, at=_hours_ago(hours), status=ExecutionStatus.SKIPPED)
    _execution(trigger, at=_hours_ago(4))

    assert services.executions_prune(now=NOW) == 2

    assert _statuses(trigger) == ["skipped", "succeeded"]


def test_executions_prune__trigger_keep_overrides_the_setting(trigger, retention):
    """A trigger's keep_succeeded / keep_failed win over the settings, also to keep more."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    retention.SCHEDULER_KEEP_FAILED = 1
    _set_retention(trigger, keep_succeeded=3, keep_failed=2)
    for hours in range(1, 6):
        _execution(trigger, at=_hours_ago(hours))
    for hours in range(6, 10):
        _execution(trigger, at=_hours_ago(hours), status=ExecutionStatus.FAILED)

    assert services.executions_prune(now=NOW) == 4

    assert _statuses(trigger) == ["succeeded"] * 3 + ["failed"] * 2


def test_executions_prune__zero_keeps_everything(trigger, retention):
    """0 means no limit, in the settings and on a trigger."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    _set_retention(trigger, keep_succeeded=0)
    for hours in range(1, 5):
        _execution(trigger, at=_hours_ago(hours))
    _execution(trigger, at=_hours_ago(24 * 365), status=ExecutionStatus.FAILED)

    assert services.executions_prune(now=NOW) == 0
    assert trigger.executions.count() == 5


def test_executions_prune__drops_executions_older_than_retention_days(trigger, retention):
    """With SCHEDULER_RETENTION_DAYS=7 executions that finished over a week ago go, whatever their status."""
    retention.SCHEDULER_RETENTION_DAYS = 7
    recent = _execution(trigger, at=NOW - timedelta(days=6, hours=23))
    for days, status in ((8, ExecutionStatus.SUCCEEDED), (9, ExecutionStatus.FAILED), (10, ExecutionStatus.SKIPPED)):
        _execution(trigger, at=NOW - timedelta(days=days), status=status)

    assert services.executions_prune(now=NOW) == 3

    assert list(trigger.executions.all()) == [recent]


def test_executions_prune__age_counts_from_when_it_finished(trigger, retention):
    """A backfilled old slot that finished yesterday is not old."""
    retention.SCHEDULER_RETENTION_DAYS = 7
    backfilled = _execution(
        trigger, at=NOW - timedelta(days=30), origin=ExecutionOrigin.BACKFILL, finished_at=NOW - timedelta(days=1)
    )

    assert services.executions_prune(now=NOW) == 0
    assert list(trigger.executions.all()) == [backfilled]


def test_executions_prune__trigger_retention_days_overrides_the_setting(trigger, retention):
    """A trigger's retention_days wins over SCHEDULER_RETENTION_DAYS; others keep the default."""
    retention.SCHEDULER_RETENTION_DAYS = 30
    _set_retention(trigger, retention_days=2)
    default = TriggerFactory(workflow=trigger.workflow)
    _execution(trigger, at=NOW - timedelta(days=1))
    _execution(trigger, at=NOW - timedelta(days=3))
    _execution(default, at=NOW - timedelta(days=3))
    _execution(default, at=NOW - timedelta(days=31))

    assert services.executions_prune(now=NOW) == 2

    assert trigger.executions.count() == 1
    assert list(default.executions.values_list("scheduled_for", flat=True)) == [NOW - timedelta(days=3)]


def test_executions_prune__never_deletes_unfinished(trigger, retention):
    """Queued, running and retrying executions stay, however old and however many."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    retention.SCHEDULER_KEEP_FAILED = 1
    retention.SCHEDULER_RETENTION_DAYS = 1
    unfinished = [
        _execution(trigger, at=NOW - timedelta(days=days), status=status)
        for days, status in (
            (10, ExecutionStatus.QUEUED),
            (11, ExecutionStatus.RUNNING),
            (12, ExecutionStatus.RETRYING),
            (13, ExecutionStatus.QUEUED),
        )
    ]
    _execution(trigger, at=NOW - timedelta(days=14))

    assert services.executions_prune(now=NOW) == 1

    assert set(trigger.executions.all()) == set(unfinished)


def test_executions_prune__deletes_in_batches(trigger, retention, monkeypatch):
    """More executions than one batch are all pruned, a batch per transaction."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    monkeypatch.setattr(services, "_PRUNE_BATCH", 2)
    for hours in range(1, 8):
        _execution(trigger, at=_hours_ago(hours))

    assert services.executions_prune(now=NOW) == 6
    assert trigger.executions.count() == 1


def test_executions_prune__stats_unchanged(trigger, retention):
    """Pruning deletes rows but not what the stats counted."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    retention.SCHEDULER_KEEP_FAILED = 1
    for hours, status, duration in (
        (1, ExecutionStatus.SUCCEEDED, 100),
        (2, ExecutionStatus.FAILED, 2000),
        (3, ExecutionStatus.SUCCEEDED, 150),
        (4, ExecutionStatus.FAILED, 3000),
        (5, ExecutionStatus.SKIPPED, None),
        (6, ExecutionStatus.SUCCEEDED, 120),
    ):
        _recorded(trigger, at=_hours_ago(hours), status=status, duration_ms=duration)
    before = selectors.trigger_stats(trigger, now=NOW)

    assert services.executions_prune(now=NOW) == 3

    after = selectors.trigger_stats(trigger, now=NOW)
    assert after["last_statuses"] == ["succeeded", "failed", "skipped"]
    for figures in (before, after):
        del figures["last_statuses"]
    assert after == before
    assert (after["total"], after["succeeded"], after["failed"]) == (6, 3, 2)


# --- task and beat --------------------------------------------------------------------------------


def test_prune_executions_task__returns_deleted_count(trigger, retention):
    """The periodic task prunes and says how many executions it deleted."""
    retention.SCHEDULER_KEEP_SUCCEEDED = 1
    for hours in (1, 2, 3):
        _execution(trigger, at=timezone.now() - timedelta(hours=hours))

    assert tasks.prune_executions() == {"deleted": 2}


def test_beat_schedule__prunes_executions_on_the_low_queue():
    """beat runs the prune task every SCHEDULER_RETENTION_INTERVAL_SECONDS on the low queue."""
    entry = django_settings.CELERY_BEAT_SCHEDULE["scheduler.prune-executions"]
    assert entry["task"] == tasks.prune_executions.name == "schedules.prune_executions"
    assert entry["schedule"] == float(django_settings.SCHEDULER_RETENTION_INTERVAL_SECONDS) == 3600.0
    assert entry["options"]["queue"] == "low"
