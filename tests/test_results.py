"""scheduler_project.results: task results written in batches, the same rows the stock backend writes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import states
from django_celery_results.backends.database import DatabaseBackend
from django_celery_results.models import TaskResult

from scheduler_project import results
from scheduler_project.celery import app


def request(task_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=task_id,
        task="schedules.run_execution",
        argsrepr="()",
        kwargsrepr="{'execution_id': 'e-1', 'attempt': 1}",
        hostname="celery@test",
        periodic_task_name=None,
        children=[],
        meta={},
        ignore_result=False,
        group=None,
        chord=None,
    )


@pytest.fixture
def pending(monkeypatch):
    fresh = results._Pending()
    monkeypatch.setattr(results, "pending", fresh)
    monkeypatch.setattr(fresh, "_ensure_flusher", lambda: None)  # flushed by hand here
    return fresh


def stored_fields(task_id: str) -> dict:
    row = TaskResult.objects.values().get(task_id=task_id)
    return {key: value for key, value in row.items() if key not in ("id", "task_id", "date_created", "date_done")}


def test_batched_backend__writes_the_rows_the_stock_backend_writes(db, pending):
    """A finished task's result row, once flushed, has every field the stock backend would have written."""
    summary = {"execution_id": "e-1", "attempt": 1, "status": "succeeded"}
    DatabaseBackend(app=app).store_result("stock", summary, states.SUCCESS, request=request("stock"))
    backend = results.BatchedDatabaseBackend(app=app)
    backend.store_result("batched", summary, states.SUCCESS, request=request("batched"))
    assert not TaskResult.objects.filter(task_id="batched").exists()
    assert pending.flush() == 1
    assert stored_fields("batched") == stored_fields("stock")
    assert backend.get_task_meta("batched")["result"] == summary


def test_batched_backend__many_results_one_statement_and_updates_in_place(db, pending, django_assert_num_queries):
    """A flush is one upsert, whatever it holds; a result stored again for a task replaces it."""
    backend = results.BatchedDatabaseBackend(app=app)
    for number in range(50):
        backend.store_result(f"t{number}", {"n": number}, states.SUCCESS, request=request(f"t{number}"))
    with django_assert_num_queries(1):
        assert pending.flush() == 50
    backend.store_result("t7", "boom", states.FAILURE, request=request("t7"))
    pending.flush()
    assert TaskResult.objects.count() == 50
    assert TaskResult.objects.get(task_id="t7").status == states.FAILURE


def test_batched_backend__other_states_written_at_once(db, pending):
    """Only final states wait for the flush: STARTED (and anything else) is written as the stock backend does."""
    results.BatchedDatabaseBackend(app=app).store_result("s", None, states.STARTED, request=request("s"))
    assert TaskResult.objects.get(task_id="s").status == states.STARTED
    assert pending.rows == {}


def test_batched_backend__failed_flush_keeps_results_for_the_next(db, pending, monkeypatch):
    """A database error during a flush loses nothing: the batch is written by the next flush."""
    backend = results.BatchedDatabaseBackend(app=app)
    backend.store_result("a", 1, states.SUCCESS, request=request("a"))
    real = TaskResult.objects.bulk_create

    def down(*args, **kwargs):
        from django.db import OperationalError

        raise OperationalError("server closed the connection")

    monkeypatch.setattr(TaskResult.objects, "bulk_create", down)
    assert pending.flush() == 0
    monkeypatch.setattr(TaskResult.objects, "bulk_create", real)
    assert pending.flush() == 1
    assert TaskResult.objects.filter(task_id="a").exists()


def test_batched_backend__a_refused_row_is_dropped_alone(db, pending, monkeypatch, caplog):
    """A row the table refuses (say, a value too long) is written one by one and dropped alone, so
    it cannot block every later batch."""
    from django.db import DataError

    backend = results.BatchedDatabaseBackend(app=app)
    for task_id in ("good-1", "bad", "good-2"):
        backend.store_result(task_id, 1, states.SUCCESS, request=request(task_id))
    real = results._Pending._write

    def refuse_bad(rows):
        if any(row.task_id == "bad" for row in rows):
            raise DataError("value too long for type character varying(100)")
        real(rows)

    monkeypatch.setattr(results._Pending, "_write", staticmethod(refuse_bad))
    assert pending.flush() == 2
    assert sorted(TaskResult.objects.values_list("task_id", flat=True)) == ["good-1", "good-2"]
    assert pending.rows == {} and "task result of bad dropped" in caplog.text


def test_batched_backend__memory_is_bounded_while_the_database_is_away(db, pending, monkeypatch):
    """Kept results are capped (the newest stay) while flushes keep failing."""
    from django.db import OperationalError

    monkeypatch.setattr(results, "MAX_PENDING", 2)
    backend = results.BatchedDatabaseBackend(app=app)
    for task_id in ("old", "mid", "new"):
        backend.store_result(task_id, 1, states.SUCCESS, request=request(task_id))

    def down(rows):
        raise OperationalError("server closed the connection")

    monkeypatch.setattr(results._Pending, "_write", staticmethod(down))
    assert pending.flush() == 0
    assert sorted(pending.rows) == ["mid", "new"]


@pytest.mark.django_db(transaction=True)
def test_batched_backend__shutdown_flush_waits_for_the_write_in_progress(pending, monkeypatch):
    """The shutdown flush does not find the buffer empty while the flusher is still writing the
    batch it took (the process would exit under it): it returns only once that write is done."""
    import threading

    backend = results.BatchedDatabaseBackend(app=app)
    backend.store_result("a", 1, states.SUCCESS, request=request("a"))
    real = results._Pending._write
    writing, release = threading.Event(), threading.Event()

    def slow(rows):
        writing.set()
        assert release.wait(10)
        real(rows)

    monkeypatch.setattr(results._Pending, "_write", staticmethod(slow))
    flusher = threading.Thread(target=pending.flush)
    flusher.start()
    assert writing.wait(10)
    shutdown = threading.Thread(target=pending.flush)
    shutdown.start()
    shutdown.join(0.3)
    assert shutdown.is_alive()  # waiting for the flusher's write
    release.set()
    shutdown.join(10)
    flusher.join(10)
    assert not shutdown.is_alive() and TaskResult.objects.filter(task_id="a").exists()
