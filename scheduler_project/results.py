"""django-celery-results' database backend, writing finished tasks' results in batches.

The stock backend stores each result in a transaction of its own: one commit, and its fsync, per
task, which caps a worker at what the disk can flush (TRAPS.md: ~60-110 tasks/s on PostgreSQL here).
This one keeps each worker process's finished results in memory and writes them in one upsert every
SCHEDULER_RESULTS_FLUSH_SECONDS, or as soon as RESULTS_BATCH are waiting, and on shutdown. States
other than the final ones (STARTED, RETRY, groups and chords) go through the stock path unchanged.

What a SIGKILLed worker had not written yet is lost: task results are not this service's history
(the Execution rows are, written by the tasks themselves) and django-celery-results expires them
after a day anyway.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals, states
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, close_old_connections
from django_celery_results.backends.database import DatabaseBackend
from django_celery_results.models import TaskResult

logger = logging.getLogger(__name__)

# Results one upsert writes at most; more waiting than this are flushed at once.
RESULTS_BATCH = 500
# Results kept at most while the database cannot be written (then the oldest are dropped).
MAX_PENDING = 20 * RESULTS_BATCH
_FIELDS = (
    "status",
    "result",
    "traceback",
    "meta",
    "content_encoding",
    "content_type",
    "periodic_task_name",
    "task_name",
    "task_args",
    "task_kwargs",
    "worker",
)


class _Pending:
    """The finished results waiting in this process. Celery keeps a backend instance per thread
    (the threads pool has many), so the buffer and its flusher thread belong to the process."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()  # guards rows
        # Held from taking a batch to its write: a shutdown flush waits for the flusher's write
        # in progress instead of finding the buffer empty and letting the process exit under it.
        self.writing = threading.Lock()
        self.wake = threading.Event()
        self.flusher_pid: int | None = None

    def add(self, task_id: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows[task_id] = row
            full = len(self.rows) >= RESULTS_BATCH
        self._ensure_flusher()
        if full:
            self.wake.set()

    def flush(self) -> int:
        """Write what is waiting in one upsert; returns how many results were written."""
        with self.writing:
            with self.lock:
                batch, self.rows = self.rows, {}
            if not batch:
                return 0
            rows = [
                TaskResult(task_id=task_id, **{name: row.get(name) for name in _FIELDS})
                for task_id, row in batch.items()
            ]
            try:
                self._write(rows)
            except (DataError, IntegrityError) as exc:
                # A row the table refuses (a value too long, say) would fail every later batch:
                # write them one by one and drop only the refused ones.
                logger.warning("a batch of %s task results was refused (%s); writing them one by one", len(rows), exc)
                return self._write_each(rows)
            except (DatabaseError, InterfaceError) as exc:
                logger.warning("could not write %s task results (%s); keeping them for the next flush", len(rows), exc)
                with self.lock:
                    self.rows = {**batch, **self.rows}
                    excess = len(self.rows) - MAX_PENDING
                    if excess > 0:  # the database is away for long: bound the memory, oldest go first
                        for task_id in list(self.rows)[:excess]:
                            del self.rows[task_id]
                        logger.warning("dropped %s task results: the database has been unreachable too long", excess)
                return 0
            return len(rows)

    @staticmethod
    def _write(rows: list[TaskResult]) -> None:
        TaskResult.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["task_id"], update_fields=[*_FIELDS, "date_done"]
        )

    def _write_each(self, rows: list[TaskResult]) -> int:
        written = 0
        for row in rows:
            try:
                self._write([row])
                written += 1
            except (DataError, IntegrityError) as exc:
                logger.error("task result of %s dropped: the database refuses it (%s)", row.task_id, exc)
        return written

    def _ensure_flusher(self) -> None:
        # One flusher thread per process: a prefork child starts its own after the fork.
        if self.flusher_pid == os.getpid():
            return
        with self.lock:
            if self.flusher_pid == os.getpid():
                return
            self.flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="results-flusher", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            self.wake.wait(settings.SCHEDULER_RESULTS_FLUSH_SECONDS)
            self.wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad batch
                logger.exception("task results flush failed")
            finally:
                close_old_connections()


pending = _Pending()


class BatchedDatabaseBackend(DatabaseBackend):
    """DatabaseBackend whose final task states are written in batches (see the module docstring)."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        status: str,
        traceback: str | None = None,
        request: Any = None,
        using: str | None = None,
    ) -> Any:
        if status not in states.READY_STATES or using not in (None, "default"):
            return super()._store_result(task_id, result, status, traceback=traceback, request=request, using=using)
        # The same fields, encoded the same way, as DatabaseBackend._store_result writes.
        content_type, content_encoding, encoded = self.encode_content(result)
        meta = {**self._get_meta_from_request(request), "children": self.current_task_children(request)}
        _, _, encoded_meta = self.encode_content(meta)
        row = {
            "content_encoding": content_encoding,
            "content_type": content_type,
            "meta": encoded_meta,
            "result": encoded,
            "status": status,
            "traceback": traceback,
        }
        row.update(self._get_extended_properties(request, traceback))
        pending.add(task_id, row)
        return result


def _flush_on_shutdown(**_: Any) -> None:
    pending.flush()


# A warm shutdown writes what is waiting: prefork children, and the threads/solo/gevent pools' worker.
signals.worker_process_shutdown.connect(_flush_on_shutdown, weak=False)
signals.worker_shutdown.connect(_flush_on_shutdown, weak=False)
