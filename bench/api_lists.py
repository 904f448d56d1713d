"""List pages at scale: the API's trigger and execution lists and the admin changelists.

Seeds N triggers and M executions straight in SQL (INSERT ... SELECT generate_series, with the
execution indexes built after the load), then requests each list through Django's test client
(in process: no sockets, but every middleware, authentication, the view, the serializer or the
template) and prints, per list, p50 and p99 of the time for a page of --page-size rows, the time
the database took for such a page (its queries' durations added up, the median of 5 requests;
the rest is Python, which suffers first when the machine is busy) and the number of SQL queries
a page of 5 and of 50 rows takes.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_api \
        .venv/bin/python bench/api_lists.py --triggers 100000 --executions 10000000

It uses (and empties) the database in DATABASE_URL: point it at a scratch database. PostgreSQL
only. --reuse keeps the rows of an earlier run of the same size (seeding 10M rows takes minutes).

The data: five owners, "most" owning ~89% of the triggers, "mid" ~8%, "other" ~3%, "some" 0.3%
and "few" 20 triggers, each with a few workflows; triggers of every kind, state, priority and five time zones;
executions spread over about five months of one-minute slots (many triggers share a slot), 85%
succeeded, 5% failed, 10% skipped (missed, overlap, ...), the last 20 minutes queued, running or
retrying; origins 93% schedule, the rest catch-up, manual, backfill, retry and fallback.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
os.environ["CELERY_BROKER_URL"] = "memory://"
# Production-like: DEBUG off (no query log, no debug templates), so real keys are needed. Fixed ones
# (a scratch database), so --reuse can still decrypt the workflows' secrets of an earlier run.
os.environ["DEBUG"] = "0"
os.environ.setdefault("SECRET_KEY", "bench-api-lists-" + "0" * 40)
os.environ.setdefault("SCHEDULER_SECRET_KEYS", base64.urlsafe_b64encode(b"bench/api_lists.py fixed key 32b").decode())
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")
# The workflows point at a closed port on loopback (never called): allow it past the SSRF guard.
os.environ.setdefault("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8")

import logging  # noqa: E402
import warnings  # noqa: E402

# The app as gunicorn loads it (scheduler_project/wsgi.py: django.setup(), the URL conf, then
# gc.freeze()), so the timings see the collector as a server process does.
import django  # noqa: E402

import scheduler_project.wsgi  # noqa: E402, F401

logging.disable(logging.WARNING)
# whitenoise: no collectstatic for a benchmark.
warnings.filterwarnings("ignore", message="No directory at")

from django.contrib import admin  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Permission  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, models  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from schedules.models import Execution, ExecutionStats, Trigger  # noqa: E402
from workflows.models import Workflow  # noqa: E402
from workflows.services import workflow_create  # noqa: E402

OWNERS = ("most", "mid", "other", "some", "few")
WORKFLOWS_PER_OWNER = {"most": 200, "mid": 20, "other": 10, "some": 5, "few": 2}
FEW_TRIGGERS = 20
# Slots over about five months: minutes * per-minute executions = M.
SLOT_MINUTES = 150 * 24 * 60
RECENT_MINUTES = 20  # the newest slots are still queued, running or retrying


# --- Seeding ------------------------------------------------------------------------------------


def _insert_select(model: type[models.Model], exprs: dict[str, str], source: str) -> int:
    """INSERT INTO <model> (every concrete column) SELECT <exprs, else the field's default> FROM <source>.

    Columns without an expression get their field's default (as a parameter), so a field added later
    with a default needs no change here. The SQL text is built from this file's constants and
    integers only. Returns the number of rows inserted.
    """
    unknown = set(exprs) - {field.column for field in model._meta.concrete_fields}
    if unknown:
        raise ValueError(f"no such columns in {model._meta.db_table}: {sorted(unknown)}")
    columns, values, defaults = [], [], []
    for field in model._meta.concrete_fields:
        if isinstance(field, models.AutoField):
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.column in exprs:
            values.append(exprs[field.column])
        else:
            values.append("%s")
            defaults.append(field.get_db_prep_save(field.get_default(), connection))
    sql = f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} FROM {source}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, defaults)
        return cursor.rowcount


def _array(ids: list[int]) -> str:
    return f"ARRAY[{', '.join(str(int(pk)) for pk in ids)}]::bigint[]"


def seed_owners() -> tuple[dict[str, Any], dict[str, list[int]]]:
    call_command("flush", "--noinput", verbosity=0)
    user_model = get_user_model()
    # No passwords: the clients log in with force_login and tokens.
    users = {name: user_model.objects.create_user(username=name) for name in OWNERS}
    users["admin"] = user_model.objects.create_superuser(username="admin", email="", password=None)
    workflows: dict[str, list[int]] = {}
    for name in OWNERS:
        workflows[name] = [
            workflow_create(owner=users[name], name=f"{name} workflow {i}", endpoint_url="http://127.0.0.1:9/").pk
            for i in range(WORKFLOWS_PER_OWNER[name])
        ]
    return users, workflows


def seed_triggers(count: int, users: dict[str, Any], workflows: dict[str, list[int]]) -> None:
    few_every = max(1, count // FEW_TRIGGERS)
    pk = {name: int(user.pk) for name, user in users.items()}
    # Ownership interleaved over g, so each owner's triggers are spread through every ordering.
    owner_case = (
        f"CASE WHEN mod(g, {few_every}) = 0 THEN {pk['few']} WHEN mod(g, 1000) BETWEEN 1 AND 3 THEN {pk['some']} "
        f"WHEN mod(g, 100) < 8 THEN {pk['mid']} "
        f"WHEN mod(g, 100) < 11 THEN {pk['other']} ELSE {pk['most']} END"
    )
    workflow_case = (
        f"CASE WHEN mod(g, {few_every}) = 0 THEN "
        f"({_array(workflows['few'])})[1 + mod(g / {few_every}, {len(workflows['few'])})] "
        f"WHEN mod(g, 1000) BETWEEN 1 AND 3 THEN ({_array(workflows['some'])})[1 + mod(g, {len(workflows['some'])})] "
        f"WHEN mod(g, 100) < 8 THEN ({_array(workflows['mid'])})[1 + mod(g, {len(workflows['mid'])})] "
        f"WHEN mod(g, 100) < 11 THEN ({_array(workflows['other'])})[1 + mod(g, {len(workflows['other'])})] "
        f"ELSE ({_array(workflows['most'])})[1 + mod(g, {len(workflows['most'])})] END"
    )
    kind = "CASE WHEN mod(g, 20) < 16 THEN 'cron' WHEN mod(g, 20) < 19 THEN 'interval' ELSE 'once' END"
    completed = "(mod(g, 20) = 19 AND mod(g / 20, 2) = 0)"
    exprs = {
        "owner_id": owner_case,
        "workflow_id": workflow_case,
        "name": "'Trigger ' || lpad(g::text, 7, '0')",
        "kind": kind,
        "cron": (
            "CASE WHEN mod(g, 20) < 16 THEN mod(g, 60)::text || ' ' || "
            "(ARRAY['*', '9', '*/2', '9-17'])[1 + mod(g / 60, 4)] || ' * * ' || "
            "(ARRAY['*', '1-5', 'MON'])[1 + mod(g, 3)] ELSE '' END"
        ),
        "timezone": "(ARRAY['UTC', 'America/Los_Angeles', 'Europe/London', 'Asia/Kolkata', "
        "'Australia/Lord_Howe'])[1 + mod(g, 5)]",
        "interval_seconds": (
            "CASE WHEN mod(g, 20) BETWEEN 16 AND 18 THEN (ARRAY[60, 300, 900, 3600])[1 + mod(g, 4)] END"
        ),
        "run_at": "CASE WHEN mod(g, 20) = 19 THEN now() + make_interval(hours => 1 + mod(g, 1000)) END",
        "enabled": "mod(g, 10) <> 7",
        "pause_reason": "CASE WHEN mod(g, 10) = 7 THEN 'bench pause' ELSE '' END",
        "paused_at": "CASE WHEN mod(g, 10) = 7 THEN now() - interval '1 day' END",
        "completed_at": f"CASE WHEN {completed} THEN now() - interval '2 days' END",
        "next_run_at": f"CASE WHEN {completed} THEN NULL ELSE now() + make_interval(secs => mod(g * 7, 86400)) END",
        "last_run_at": "now() - make_interval(mins => mod(g, 600))",
        "active_since": "now() - interval '200 days'",
        "run_count": "mod(g, 500)",
        "priority": "CASE mod(g, 10) WHEN 0 THEN 'high' WHEN 9 THEN 'low' ELSE 'normal' END",
        "created_at": f"now() - make_interval(mins => {count} - g)",
        "updated_at": "now()",
    }
    _insert_select(Trigger, exprs, f"generate_series(0, {count - 1}) AS g")


def _execution_indexes() -> list[tuple[str, str]]:
    """(name, CREATE INDEX ...) of every index on the execution table but its primary key."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.tablename = %s AND i.indexname NOT IN ("
            "  SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'u'))",
            [Execution._meta.db_table, Execution._meta.db_table],
        )
        return cursor.fetchall()


def seed_executions(count: int, triggers: int, chunk: int = 1_000_000) -> tuple[float, float]:
    """Insert ``count`` executions (indexes dropped meanwhile, foreign keys unchecked); (load s, index s)."""
    per_minute = max(1, math.ceil(count / SLOT_MINUTES))
    if per_minute > triggers:
        raise SystemExit(f"--executions {count} needs at least {per_minute} triggers (one slot a minute each).")
    stride = triggers // per_minute
    indexes = _execution_indexes()
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
        # The rows point at existing triggers and workflows by construction: skip the per-row FK checks.
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(
            "CREATE TEMP TABLE bench_trigger_map AS "
            "SELECT (row_number() OVER (ORDER BY id) - 1)::int AS idx, id, workflow_id FROM schedules_trigger"
        )
        cursor.execute("CREATE UNIQUE INDEX ON bench_trigger_map (idx)")
    # g -> slot minute m = g / per_minute and place j = g % per_minute in it; the trigger of (m, j) is
    # (j * stride + m * 7919) mod N: distinct within a minute, so (trigger, slot) stays unique.
    r = "mod(mod(hashint8(g), 1000) + 1000, 1000)"
    r2 = "mod(mod(hashint8(-g - 1), 1000) + 1000, 1000)"
    recent = f"(g / {per_minute} < {RECENT_MINUTES})"
    status = (
        f"CASE WHEN {recent} THEN (CASE WHEN {r} < 300 THEN 'queued' WHEN {r} < 500 THEN 'running' "
        f"WHEN {r} < 550 THEN 'retrying' ELSE 'succeeded' END) "
        f"WHEN {r} < 850 THEN 'succeeded' WHEN {r} < 900 THEN 'failed' ELSE 'skipped' END"
    )
    origin = (
        f"CASE WHEN {r2} < 930 THEN 'schedule' WHEN {r2} < 950 THEN 'catchup' WHEN {r2} < 970 THEN 'manual' "
        f"WHEN {r2} < 985 THEN 'backfill' WHEN {r2} < 995 THEN 'retry' ELSE 'fallback' END"
    )
    attempt_log = (
        '{"attempts": [{"attempt": 1, "started_at": "2026-01-01T09:00:01+00:00", "http_status": 200, '
        '"duration_ms": 180, "error": "", "retry_in_seconds": null}]}'
    )
    # {first} and {last} are filled in per chunk.
    source = (
        "(SELECT g, s.status, s.origin, t.id AS trigger_id, t.workflow_id, "  # noqa: S608 - constants and ints
        f"  date_trunc('minute', now()) - make_interval(mins => 1 + g / {per_minute}) AS slot, {r} AS r "
        "FROM generate_series({first}, {last}) AS g "
        f"CROSS JOIN LATERAL (SELECT {status} AS status, {origin} AS origin) s "
        f"JOIN bench_trigger_map t ON t.idx = mod(mod(g, {per_minute}) * {stride} + (g / {per_minute}) * 7919, "
        f"{triggers})) x"
    )
    finished = "x.status IN ('succeeded', 'failed', 'skipped')"
    called = "x.status IN ('succeeded', 'failed')"
    exprs = {
        "id": "gen_random_uuid()",
        "trigger_id": "x.trigger_id",
        "workflow_id": "x.workflow_id",
        "scheduled_for": "x.slot",
        "manual": "x.origin IN ('manual', 'backfill', 'retry')",
        "origin": "x.origin",
        "skip_reason": (
            "CASE WHEN x.status <> 'skipped' THEN '' WHEN x.r < 960 THEN 'missed' WHEN x.r < 990 THEN 'overlap' "
            "WHEN x.r < 998 THEN 'outside_window' ELSE 'workflow_inactive' END"
        ),
        "inputs": '\'{"region": "eu"}\'::jsonb',
        "status": "x.status",
        "attempts": "CASE WHEN x.status = 'failed' THEN 3 WHEN x.status IN ('queued', 'skipped') THEN 0 ELSE 1 END",
        "created_at": "x.slot",
        "started_at": (
            f"CASE WHEN {called} OR x.status IN ('running', 'retrying') THEN x.slot + interval '1 second' END"
        ),
        "finished_at": f"CASE WHEN {finished} THEN x.slot + interval '2 seconds' END",
        "lease_expires_at": "CASE WHEN x.status = 'running' THEN now() + interval '1 minute' END",
        "http_status": "CASE WHEN x.status = 'succeeded' THEN 200 WHEN x.status = 'failed' THEN 503 END",
        "error": "CASE WHEN x.status = 'failed' THEN 'HTTP 503 from endpoint' ELSE '' END",
        "run_id": "CASE WHEN x.status = 'succeeded' THEN 'run-' || x.g ELSE '' END",
        "duration_ms": f"CASE WHEN {called} THEN 40 + mod(x.r * 37, 2000) END",
        "metadata": f"CASE WHEN {called} THEN '{attempt_log}'::jsonb ELSE '{{}}'::jsonb END",
    }
    for first in range(0, count, chunk):
        last = min(count, first + chunk) - 1
        _insert_select(Execution, exprs, source.replace("{first}", str(first)).replace("{last}", str(last)))
        print(f"  executions {last + 1:>12,} / {count:,}  {time.perf_counter() - started:6.0f} s", flush=True)
    loaded = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("DROP TABLE bench_trigger_map")
    return loaded - started, time.perf_counter() - loaded


def seed_stats() -> None:
    """The running counters the workers would have kept: one row per (trigger, workflow)."""
    finished = "status IN ('succeeded', 'failed', 'skipped') AND origin <> 'fallback'"
    called = "status IN ('succeeded', 'failed') AND origin <> 'fallback' AND duration_ms IS NOT NULL"
    exprs = {
        "trigger_id": "trigger_id",
        "workflow_id": "workflow_id",
        "total": f"count(*) FILTER (WHERE {finished})",
        "succeeded": "count(*) FILTER (WHERE status = 'succeeded' AND origin <> 'fallback')",
        "failed": "count(*) FILTER (WHERE status = 'failed' AND origin <> 'fallback')",
        "skipped": "count(*) FILTER (WHERE status = 'skipped' AND origin <> 'fallback')",
        "duration_count": f"count(*) FILTER (WHERE {called})",
        "duration_sum_ms": f"coalesce(sum(duration_ms) FILTER (WHERE {called}), 0)",
        "duration_max_ms": f"coalesce(max(duration_ms) FILTER (WHERE {called}), 0)",
        "duration_histogram": "'{}'::jsonb",
        "updated_at": "now()",
    }
    _insert_select(ExecutionStats, exprs, f"{Execution._meta.db_table} GROUP BY trigger_id, workflow_id")


def seed(triggers: int, executions: int) -> None:
    started = time.perf_counter()
    users, workflows = seed_owners()
    seed_triggers(triggers, users, workflows)
    print(f"seeded {triggers:,} triggers in {time.perf_counter() - started:.0f} s", flush=True)
    load_s, index_s = seed_executions(executions, triggers)
    print(f"seeded {executions:,} executions in {load_s:.0f} s, indexes in {index_s:.0f} s", flush=True)
    t0 = time.perf_counter()
    seed_stats()
    with connection.cursor() as cursor:
        for model in (Trigger, Execution, ExecutionStats, Workflow):
            cursor.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")
    print(f"stats and VACUUM ANALYZE in {time.perf_counter() - t0:.0f} s", flush=True)


def seeded(triggers: int, executions: int) -> bool:
    """Whether the database holds an earlier run's rows of this size."""
    user_model = get_user_model()
    return (
        Trigger.objects.count() == triggers
        and Execution.objects.count() == executions
        and user_model.objects.filter(username__in=[*OWNERS, "admin"]).count() == len(OWNERS) + 1
    )


# --- Measuring ----------------------------------------------------------------------------------


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


class Case:
    def __init__(self, label: str, who: str, url: str, kind: str) -> None:
        self.label, self.who, self.url, self.kind = label, who, url, kind


def cases() -> list[Case]:
    """What is measured: ``{n}`` in a URL is the page size (the admin's is set on its ModelAdmin)."""
    user_model = get_user_model()
    most = user_model.objects.get(username="most")
    few = user_model.objects.get(username="few")
    busy_workflow = (
        Trigger.objects.filter(owner=most).values("workflow_id").annotate(n=models.Count("id")).order_by("-n")[0]
    )["workflow_id"]
    trigger = Trigger.objects.filter(owner=most).order_by("id")[len(OWNERS)].pk
    few_trigger = Trigger.objects.filter(owner=few).order_by("id").first().pk
    day = Execution.objects.order_by("-scheduled_for").values_list("scheduled_for", flat=True).first()
    after = (day.replace(hour=0, minute=0, second=0, microsecond=0) - _days(30)).isoformat().replace("+00:00", "Z")
    before = (day.replace(hour=0, minute=0, second=0, microsecond=0) - _days(29)).isoformat().replace("+00:00", "Z")
    api = [
        ("triggers", "admin", "/api/triggers/?page_size={n}"),
        ("triggers ?status=active", "admin", "/api/triggers/?page_size={n}&status=active"),
        ("triggers ?workflow=", "admin", f"/api/triggers/?page_size={{n}}&workflow={busy_workflow}"),
        ("triggers ?ordering=-next_run_at", "admin", "/api/triggers/?page_size={n}&ordering=-next_run_at"),
        ("triggers page 20", "admin", "/api/triggers/?page_size={n}&page=20"),
        ("triggers", "most", "/api/triggers/?page_size={n}"),
        ("triggers", "few", "/api/triggers/?page_size={n}"),
        ("executions", "admin", "/api/executions/?page_size={n}"),
        ("executions page 20", "admin", "/api/executions/?page_size={n}&page=20"),
        ("executions ?status=failed", "admin", "/api/executions/?page_size={n}&status=failed"),
        ("executions ?status=running", "admin", "/api/executions/?page_size={n}&status=running"),
        ("executions ?origin=manual", "admin", "/api/executions/?page_size={n}&origin=manual"),
        ("executions ?origin=fallback", "admin", "/api/executions/?page_size={n}&origin=fallback"),
        ("executions ?workflow=", "admin", f"/api/executions/?page_size={{n}}&workflow={busy_workflow}"),
        ("executions ?trigger=", "admin", f"/api/executions/?page_size={{n}}&trigger={trigger}"),
        (
            "executions ?scheduled_for_after/before (1 day)",
            "admin",
            f"/api/executions/?page_size={{n}}&scheduled_for_after={after}&scheduled_for_before={before}",
        ),
        ("executions", "most", "/api/executions/?page_size={n}"),
        ("executions ?status=failed", "most", "/api/executions/?page_size={n}&status=failed"),
        ("executions", "mid", "/api/executions/?page_size={n}"),
        ("executions", "other", "/api/executions/?page_size={n}"),
        ("executions ?status=failed", "other", "/api/executions/?page_size={n}&status=failed"),
        ("executions", "some", "/api/executions/?page_size={n}"),
        ("executions ?status=failed", "some", "/api/executions/?page_size={n}&status=failed"),
        ("executions", "few", "/api/executions/?page_size={n}"),
        ("executions ?status=failed", "few", "/api/executions/?page_size={n}&status=failed"),
        ("triggers/<id>/executions", "admin", f"/api/triggers/{trigger}/executions/?page_size={{n}}"),
        ("triggers/<id>/executions", "few", f"/api/triggers/{few_trigger}/executions/?page_size={{n}}"),
    ]
    # The admin's ?o= is a column's position (the checkbox first): find the next run column's.
    next_run_column = list(admin.site.get_model_admin(Trigger).list_display).index("next_run") + 1
    admin_pages = [
        ("admin triggers", "admin", "/admin/schedules/trigger/"),
        ("admin triggers ?status=active", "admin", "/admin/schedules/trigger/?status=active"),
        ("admin triggers ?workflow=", "admin", f"/admin/schedules/trigger/?workflow__id__exact={busy_workflow}"),
        ("admin triggers by next run", "admin", f"/admin/schedules/trigger/?o={next_run_column}"),
        ("admin triggers", "most", "/admin/schedules/trigger/"),
        ("admin triggers", "few", "/admin/schedules/trigger/"),
        ("admin executions", "admin", "/admin/schedules/execution/"),
        ("admin executions ?status=failed", "admin", "/admin/schedules/execution/?status__exact=failed"),
        ("admin executions ?origin=backfill", "admin", "/admin/schedules/execution/?origin__exact=backfill"),
        ("admin executions ?trigger=", "admin", f"/admin/schedules/execution/?trigger__id__exact={trigger}"),
        ("admin executions ?workflow=", "admin", f"/admin/schedules/execution/?workflow__id__exact={busy_workflow}"),
        ("admin executions", "most", "/admin/schedules/execution/"),
        ("admin executions", "other", "/admin/schedules/execution/"),
        ("admin executions", "some", "/admin/schedules/execution/"),
        ("admin executions", "few", "/admin/schedules/execution/"),
    ]
    return [Case(*row, kind="api") for row in api] + [Case(*row, kind="admin") for row in admin_pages]


def _days(n: int) -> Any:
    from datetime import timedelta

    return timedelta(days=n)


class Runner:
    def __init__(self) -> None:
        self.api_clients: dict[str, Client] = {}
        self.admin_clients: dict[str, Client] = {}

    def api_client(self, who: str) -> Client:
        if who not in self.api_clients:
            user = get_user_model().objects.get(username=who)
            token, _ = Token.objects.get_or_create(user=user)
            self.api_clients[who] = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
        return self.api_clients[who]

    def admin_client(self, who: str) -> Client:
        if who not in self.admin_clients:
            client = Client()
            client.force_login(get_user_model().objects.get(username=who))
            self.admin_clients[who] = client
        return self.admin_clients[who]

    def get(self, case: Case, size: int) -> Any:
        # As a TLS proxy hands requests on: with DEBUG off, plain HTTP is redirected to HTTPS.
        if case.kind == "api":
            response = self.api_client(case.who).get(case.url.format(n=size), secure=True)
        else:
            for model in (Trigger, Execution):
                admin.site.get_model_admin(model).list_per_page = size
            response = self.admin_client(case.who).get(case.url, secure=True)
        if response.status_code != 200:
            raise SystemExit(f"{case.label} as {case.who}: HTTP {response.status_code} {response.content[:300]!r}")
        return response

    def queries(self, case: Case, size: int) -> tuple[int, int, float]:
        """(queries, rows on the page, ms the database took for them: the median of 5 requests)."""
        self.get(case, size)  # the first request of a client logs in or makes its token
        sql_ms = []
        for _ in range(5):
            with CaptureQueriesContext(connection) as captured:
                response = self.get(case, size)
            sql_ms.append(sum(float(query["time"]) for query in captured.captured_queries) * 1000)
        if case.kind == "api":
            rows = len(response.json()["results"])
        else:
            rows = response.content.decode().count('name="_selected_action"')
        return len(captured), rows, statistics.median(sql_ms)

    def shown_count(self, case: Case, size: int) -> str:
        """The count the page shows ("+": capped, there are more)."""
        if case.kind == "api":
            body = self.get(case, size).json()
            return f"{body['count']:,}" + ("+" if body.get("count_capped") else "")
        # Read from the page (the test client only keeps template contexts once instrumented,
        # and that instrumentation would slow every render down).
        html = self.get(case, size).content.decode()
        paginator = re.search(r'<p class="paginator">(.*?)</p>', html, re.DOTALL)
        text = re.sub(r"<[^>]+>", " ", paginator.group(1)) if paginator else ""
        found = re.findall(r"([\d,]+)\s+(?:triggers?|executions?)\b", text)
        if not found:
            return "?"
        return f"{int(found[-1].replace(',', '')):,}" + ("+" if "more than" in text else "")

    def timings(self, case: Case, size: int, requests: int) -> list[float]:
        for _ in range(3):  # warm the caches and the connection
            self.get(case, size)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            self.get(case, size)
            samples.append((time.perf_counter() - started) * 1000)
        return samples


def make_owners_staff() -> None:
    """Admin ownership is for staff; the API's is for non-staff (staff see everyone's there)."""
    owners = get_user_model().objects.filter(username__in=OWNERS)
    owners.update(is_staff=True)
    permissions = Permission.objects.filter(content_type__app_label__in=["workflows", "schedules"])
    for user in owners:
        user.user_permissions.set(permissions)


def make_owners_non_staff() -> None:
    get_user_model().objects.filter(username__in=OWNERS).update(is_staff=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=100_000)
    parser.add_argument("--executions", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=60, help="timed requests per list (after 3 warm-ups)")
    parser.add_argument("--page-size", type=int, default=50, help="rows per page for the timings")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's rows of the same size")
    parser.add_argument("--only", default="", help="measure only the lists whose label contains this")
    parser.add_argument("--no-record", action="store_true", help="do not append the table to bench/RESULTS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/api_lists.py seeds with PostgreSQL SQL: point DATABASE_URL at a scratch PostgreSQL.")
    call_command("migrate", verbosity=0)
    if args.reuse and seeded(args.triggers, args.executions):
        print(f"reusing {args.triggers:,} triggers and {args.executions:,} executions")
    else:
        seed(args.triggers, args.executions)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", [Execution._meta.db_table])
        size = cursor.fetchone()[0]
    print(
        f"PostgreSQL {connection.pg_version // 10000}; {Trigger.objects.count():,} triggers, "
        f"{args.executions:,} executions ({size} with indexes); {args.requests} requests per list, "
        f"page of {args.page_size}; Django test client in process"
    )
    runner = Runner()
    rows: list[tuple[Case, float, float, float, int, int, str]] = []
    header = (
        f"{'list':48} {'as':6} {'p50 ms':>8} {'p99 ms':>8} {'SQL ms':>7} {'queries@5':>10} {'queries@50':>11} "
        f"{'count':>12}"
    )
    print(header)
    print("-" * len(header))
    for case in cases():
        if args.only and args.only not in case.label:
            continue
        if case.kind == "admin" and case.who in OWNERS:
            make_owners_staff()
        else:
            make_owners_non_staff()
        q5, _, _ = runner.queries(case, 5)
        q50, _, _ = runner.queries(case, 50)
        _, _, sql_ms = runner.queries(case, args.page_size)
        samples = runner.timings(case, args.page_size, args.requests)
        shown = runner.shown_count(case, args.page_size)
        rows.append((case, percentile(samples, 50), percentile(samples, 99), sql_ms, q5, q50, shown))
        print(
            f"{case.label:48} {case.who:6} {percentile(samples, 50):>8.1f} {percentile(samples, 99):>8.1f} "
            f"{sql_ms:>7.1f} {q5:>10} {q50:>11} {shown:>12}",
            flush=True,
        )
    make_owners_non_staff()
    if not args.no_record:
        record(args, rows, size, time.perf_counter() - started)


def record(args: argparse.Namespace, rows: list, table_size: str, took: float) -> None:
    """Append this run's table to bench/RESULTS.md (a section per run, newest last)."""
    import platform
    import subprocess
    from datetime import UTC, datetime

    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
    )
    if dirty.stdout.strip():
        commit += " + uncommitted changes"
    command = "DATABASE_URL=<scratch> .venv/bin/python bench/api_lists.py " + " ".join(sys.argv[1:])
    lines = [
        "",
        f"## API and admin lists, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {os.cpu_count()} cores, PostgreSQL {connection.pg_version // 10000}, Python "
        f"{platform.python_version()}, Django {django.get_version()}; commit {commit}; load average at the end "
        f"{os.getloadavg()[0]:.2f}; run took {took / 60:.0f} min",
        f"- Data: {args.triggers:,} triggers, {args.executions:,} executions ({table_size} with indexes); "
        f"{args.requests} timed requests per list after 3 warm-ups, page of {args.page_size}; Django's test "
        "client in process, DEBUG off. SQL ms: the page's queries added up (median of 5). Goal: p99 ≤ 100 ms, "
        "queries the same for a page of 5 and of 50.",
        "",
        "| list | as | p50 ms | p99 ms | SQL ms | queries @5 | queries @50 | count shown |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {case.label} | {case.who} | {p50:.1f} | {p99:.1f} | {sql_ms:.1f} | {q5} | {q50} | {shown} |"
            for case, p50, p99, sql_ms, q5, q50, shown in rows
        ),
    ]
    results = root / "bench" / "RESULTS.md"
    with results.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"\nappended to {results.relative_to(root)}")


if __name__ == "__main__":
    main()
