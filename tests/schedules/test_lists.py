"""The trigger and execution lists at scale (API and admin): queries per page, capped counts, stable order, indexes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.templatetags.admin_list import result_headers
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from scheduler_project.api import CappedPaginator
from schedules import selectors
from schedules.models import Execution, ExecutionOrigin, ExecutionStats, ExecutionStatus, Trigger
from tests.factories import UserFactory, WorkflowFactory

pytestmark = pytest.mark.django_db

ROWS = 55  # more than the larger page size compared
TRIGGERS = "admin:schedules_trigger_changelist"
EXECUTIONS = "admin:schedules_execution_changelist"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def _triggers(owner, workflow, count: int, *, prefix: str = "t") -> list[Trigger]:
    """``count`` plain cron triggers, made in one INSERT (a list does not need their periodic tasks)."""
    now = timezone.now()
    return Trigger.objects.bulk_create(
        Trigger(
            owner=owner,
            workflow=workflow,
            name=f"{prefix}{index:03d}",
            cron="0 9 * * 1-5",
            timezone=["UTC", "Europe/Paris", "Asia/Kolkata"][index % 3],
            next_run_at=now + timedelta(hours=index),
        )
        for index in range(count)
    )


def _executions(triggers: list[Trigger], *, at=None, **fields) -> list[Execution]:
    """One execution per trigger; all at ``at`` (one slot), else a minute apart."""
    now = timezone.now()
    return Execution.objects.bulk_create(
        Execution(
            trigger=trigger,
            workflow=trigger.workflow,
            scheduled_for=at or now - timedelta(minutes=index),
            status=fields.get("status", ExecutionStatus.SUCCEEDED),
            origin=fields.get("origin", ExecutionOrigin.SCHEDULE),
        )
        for index, trigger in enumerate(triggers)
    )


@pytest.fixture
def many(user, workflow, other_user):
    """ROWS triggers of ``user`` with an execution and stats each, and a few of another user's."""
    triggers = _triggers(user, workflow, ROWS)
    _executions(triggers)
    ExecutionStats.objects.bulk_create(
        ExecutionStats(trigger=trigger, workflow=workflow, total=3, succeeded=3) for trigger in triggers
    )
    theirs = WorkflowFactory(owner=other_user)
    _executions(_triggers(other_user, theirs, 3, prefix="theirs"))
    return triggers


def _queries(client, url: str) -> tuple[int, object]:
    client.get(url)  # warm: sessions, content types, ...
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(captured), response


@pytest.fixture
def staff_api(db):
    return api_for(UserFactory(is_staff=True))


# --- Queries per page ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/triggers/",
        "/api/triggers/?status=active&ordering=-next_run_at",
        "/api/executions/",
        "/api/executions/?status=succeeded&origin=schedule",
    ],
)
@pytest.mark.parametrize("who", ["owner", "staff"])
def test_api_lists__queries_do_not_grow_with_the_page_size(many, user, staff_api, url, who):
    """A page of 50 takes as many queries as a page of 5, for an owner (filtered to theirs) and for staff."""
    client = api_for(user) if who == "owner" else staff_api
    separator = "&" if "?" in url else "?"
    small, five = _queries(client, f"{url}{separator}page_size=5")
    large, fifty = _queries(client, f"{url}{separator}page_size=50")
    assert (len(five.json()["results"]), len(fifty.json()["results"])) == (5, 50)
    assert small == large


def test_trigger_executions__queries_do_not_grow_with_the_page_size(user, workflow):
    """GET /api/triggers/<id>/executions/ takes the same queries for 5 rows as for 50."""
    trigger = _triggers(user, workflow, 1)[0]
    now = timezone.now()
    Execution.objects.bulk_create(
        Execution(trigger=trigger, workflow=workflow, scheduled_for=now - timedelta(minutes=i)) for i in range(ROWS)
    )
    client = api_for(user)
    small, five = _queries(client, f"/api/triggers/{trigger.pk}/executions/?page_size=5")
    large, fifty = _queries(client, f"/api/triggers/{trigger.pk}/executions/?page_size=50")
    assert (len(five.json()["results"]), len(fifty.json()["results"])) == (5, 50)
    assert small == large


@pytest.fixture
def staff_client(client, user):
    """``user`` as non-superuser staff: the admin lists only their own objects."""
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["workflows", "schedules"]))
    client.force_login(user)
    return client


@pytest.mark.parametrize("model, url_name", [(Trigger, TRIGGERS), (Execution, EXECUTIONS)])
@pytest.mark.parametrize("who", ["superuser", "staff"])
def test_admin_changelists__queries_do_not_grow_with_the_page_size(
    many, admin_client, staff_client, monkeypatch, model, url_name, who
):
    """The trigger and execution changelists take as many queries for 50 rows as for 5."""
    client = admin_client if who == "superuser" else staff_client
    model_admin = admin.site.get_model_admin(model)
    monkeypatch.setattr(model_admin, "list_per_page", 5)
    small, five = _queries(client, reverse(url_name))
    monkeypatch.setattr(model_admin, "list_per_page", 50)
    large, fifty = _queries(client, reverse(url_name))
    assert (len(five.context["cl"].result_list), len(fifty.context["cl"].result_list)) == (5, 50)
    assert small == large


# --- Capped counts -------------------------------------------------------------------------------


@pytest.fixture
def limit_3(monkeypatch):
    monkeypatch.setattr(CappedPaginator, "count_limit", 3)


def test_api_list__count_below_the_limit_is_exact(staff_api, trigger):
    """Up to the limit, count is the number of rows and count_capped is false."""
    _executions([trigger, trigger])
    body = staff_api.get("/api/executions/").json()
    assert (body["count"], body["count_capped"], body["next"]) == (2, False, None)


def test_api_list__count_stops_at_the_limit_and_pages_go_on(staff_api, user, workflow, limit_3):
    """Past the limit count is the limit with count_capped; next links lead past it to every row, once."""
    _executions(_triggers(user, workflow, 7))
    with CaptureQueriesContext(connection) as captured:
        body = staff_api.get("/api/executions/?page_size=2").json()
    assert (body["count"], body["count_capped"]) == (3, True)
    count_sql = next(query["sql"] for query in captured if "COUNT(" in query["sql"].upper())
    assert "LIMIT 4" in count_sql  # reads at most limit + 1 rows, whatever the table holds
    seen = [row["id"] for row in body["results"]]
    pages = 1
    while body["next"]:
        body = staff_api.get(body["next"]).json()
        assert (body["count"], body["count_capped"]) == (3, True)
        seen += [row["id"] for row in body["results"]]
        pages += 1
    assert pages == 4 and len(seen) == len(set(seen)) == 7
    assert body["previous"]
    assert staff_api.get("/api/executions/?page_size=2&page=5").status_code == 404


def test_api_list__page_last_is_refused_while_capped(staff_api, user, workflow, limit_3):
    """page=last is unknown past the limit: 404 saying so (below the limit it works as before)."""
    _executions(_triggers(user, workflow, 5))
    response = staff_api.get("/api/executions/?page_size=2&page=last")
    assert response.status_code == 404
    assert "count_capped" in response.json()["errors"]["detail"][0]
    assert staff_api.get("/api/executions/?page_size=2&page=last&status=failed").status_code == 200


def test_api_schema__paginated_lists_document_count_capped(client):
    """Every paginated list's schema has count_capped (required) and says what count means."""
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for name in ("PaginatedTriggerList", "PaginatedExecutionList", "PaginatedWorkflowList"):
        component = schema["components"]["schemas"][name]
        assert {"count", "count_capped", "results"} <= set(component["required"]), name
        assert component["properties"]["count_capped"]["type"] == "boolean"
        assert "10000" in component["properties"]["count"]["description"]


def test_admin_changelist__capped_count_says_more_than_and_links_on(admin_client, user, workflow, monkeypatch):
    """Past the limit the execution list says "more than N", "select all" says so too, and pages go on."""
    monkeypatch.setattr(CappedPaginator, "count_limit", 3)
    monkeypatch.setattr(admin.site.get_model_admin(Execution), "list_per_page", 2)
    _executions(_triggers(user, workflow, 7))
    response = admin_client.get(reverse(EXECUTIONS))
    content = response.content.decode()
    assert "more than 3 executions" in content
    assert "Select all (more than 3) executions" in content
    seen = {execution.pk for execution in response.context["cl"].result_list}
    page = 1
    while response.context["cl"].next_page_url:
        page += 1
        assert response.context["cl"].next_page_url == f"?p={page}"
        response = admin_client.get(reverse(EXECUTIONS), {"p": page})
        assert response.status_code == 200
        seen |= {execution.pk for execution in response.context["cl"].result_list}
    assert page == 4 and len(seen) == 7
    uncapped = admin_client.get(reverse(EXECUTIONS), {"status__exact": "failed"}).content.decode()
    assert "more than" not in uncapped and "0 executions" in uncapped


# --- Order ---------------------------------------------------------------------------------------


def test_execution_list__rows_of_one_slot_page_without_repeats(staff_api, user, workflow):
    """Executions that share a slot keep one order (the id breaks the tie), so pages never repeat a row."""
    slot = timezone.now().replace(second=0, microsecond=0)
    expected = {str(execution.pk) for execution in _executions(_triggers(user, workflow, 9), at=slot)}
    for query in ("", "&ordering=status", "&ordering=-scheduled_for"):
        seen = []
        for page in range(1, 4):
            body = staff_api.get(f"/api/executions/?page_size=3&page={page}{query}").json()
            seen += [row["id"] for row in body["results"]]
        assert len(seen) == 9 and set(seen) == expected, query


def test_execution_list__default_order_is_newest_slot_then_id(staff_api, user, workflow):
    """Newest slot first; within a slot, descending id."""
    now = timezone.now().replace(microsecond=0)
    triggers = _triggers(user, workflow, 4)
    _executions(triggers[:2], at=now)
    _executions(triggers[2:], at=now - timedelta(hours=1))
    rows = staff_api.get("/api/executions/").json()["results"]
    keys = [(row["scheduled_for"], row["id"]) for row in rows]
    assert keys == sorted(keys, reverse=True)


# --- Ownership -----------------------------------------------------------------------------------


@pytest.mark.parametrize("inline_max", [100, 1])
def test_executions_owned_by__same_rows_as_the_trigger_owner_join(many, user, other_user, monkeypatch, inline_max):
    """By trigger ids (few triggers) or by the join (many), the rows are those of filter(trigger__owner=...)."""
    monkeypatch.setattr(selectors, "OWNED_TRIGGER_IDS_MAX", inline_max)
    for owner in (user, other_user, UserFactory()):
        expected = set(Execution.objects.filter(trigger__owner=owner).values_list("pk", flat=True))
        assert set(selectors.executions_owned_by(owner).values_list("pk", flat=True)) == expected
    narrowed = selectors.executions_owned_by(user, Execution.objects.filter(status=ExecutionStatus.FAILED))
    assert not narrowed.exists()


@pytest.mark.parametrize("inline_max", [100, 1])
def test_execution_list__owner_sees_only_theirs_either_way(many, user, other_user, monkeypatch, inline_max):
    """The API execution list shows an owner their executions only, on either path."""
    monkeypatch.setattr(selectors, "OWNED_TRIGGER_IDS_MAX", inline_max)
    body = api_for(other_user).get("/api/executions/?page_size=50").json()
    assert body["count"] == 3
    assert {row["trigger"] for row in body["results"]} == set(
        Trigger.objects.filter(owner=other_user).values_list("pk", flat=True)
    )
    assert api_for(UserFactory()).get("/api/executions/").json()["count"] == 0


# --- Trigger list columns ------------------------------------------------------------------------


def test_trigger_list__finished_executions_add_up_the_stats_and_survive_pruning(user, trigger):
    """finished_executions is the sum of the trigger's stats rows (one per workflow), not the rows kept."""
    moved_from = WorkflowFactory(owner=trigger.owner)
    ExecutionStats.objects.create(trigger=trigger, workflow=trigger.workflow, total=4, succeeded=4)
    ExecutionStats.objects.create(trigger=trigger, workflow=moved_from, total=3, failed=3)
    _executions([trigger])
    Execution.objects.all().delete()  # pruned
    body = api_for(user).get(f"/api/triggers/{trigger.pk}/").json()
    assert body["finished_executions"] == 7


@pytest.mark.parametrize("ordering", ["", "&ordering=-next_run_at", "&ordering=priority"])
def test_trigger_list__a_far_page_computes_annotations_for_its_own_rows_only(staff_api, many, ordering):
    """The page is chosen by id first: the OFFSET query reads no execution or stats subquery, the
    rows come back in the asked order with their annotations, and every trigger appears once."""
    reference = {t.pk: (t.last_status, t.finished_executions) for t in selectors.triggers_with_last_status()}
    seen = []
    for page in (1, 2, 3):
        with CaptureQueriesContext(connection) as captured:
            body = staff_api.get(f"/api/triggers/?page_size=20&page={page}{ordering}").json()
        offset_queries = [q["sql"] for q in captured if "OFFSET" in q["sql"] or (page == 1 and " LIMIT 20" in q["sql"])]
        assert offset_queries and all("schedules_execution" not in sql for sql in offset_queries), offset_queries
        for row in body["results"]:
            assert (row["last_status"], row["finished_executions"]) == reference[row["id"]]
        seen += [row["id"] for row in body["results"]]
    field = ordering.removeprefix("&ordering=") or "name"
    expected = Trigger.objects.order_by(field, "id").values_list("id", flat=True)
    assert seen == list(expected)


def test_preview_rows__same_as_the_serializer(user, workflow):
    """PreviewRunSerializer.rows (fields built once) answers exactly what the serializer would."""
    from schedules.api import PreviewRunSerializer

    window_trigger = _triggers(user, workflow, 1, prefix="w")[0]
    window_trigger.timezone = "America/Los_Angeles"
    window_trigger.execution_window = {"days": [1, 2, 3, 4, 5], "ranges": [["09:00", "10:00"]]}
    for trigger in (window_trigger, *_triggers(user, workflow, 2, prefix="p")):
        runs = selectors.trigger_preview(trigger, count=5)
        assert runs
        assert PreviewRunSerializer.rows(runs) == PreviewRunSerializer(runs, many=True).data


def test_trigger_admin__only_indexed_columns_are_sortable(admin_client, trigger):
    """Name and next run sort (indexes give their order); last status, executions and the rest do not."""
    cl = admin_client.get(reverse(TRIGGERS)).context["cl"]
    sortable = [str(header["text"]).lower() for header in result_headers(cl) if header["sortable"]]
    assert sortable == ["name", "next run"]


def test_execution_admin__only_the_slot_column_is_sortable(admin_client, trigger):
    """The execution list sorts by slot only, the order its index gives."""
    _executions([trigger])
    cl = admin_client.get(reverse(EXECUTIONS)).context["cl"]
    assert [str(header["text"]).lower() for header in result_headers(cl) if header["sortable"]] == ["scheduled for"]


# --- Admin filters -------------------------------------------------------------------------------


def test_execution_admin__trigger_filter_shows_only_the_chosen_trigger(admin_client, user, workflow):
    """No trigger is listed in the sidebar until one is chosen; then just that one (with an "All" link)."""
    chosen, other = _triggers(user, workflow, 2, prefix="chosen")
    _executions([chosen, other])
    content = admin_client.get(reverse(EXECUTIONS)).content.decode()
    assert f"trigger__id__exact={chosen.pk}" not in content
    response = admin_client.get(reverse(EXECUTIONS), {"trigger__id__exact": chosen.pk})
    assert [execution.trigger_id for execution in response.context["cl"].result_list] == [chosen.pk]
    spec = next(spec for spec in response.context["cl"].filter_specs if spec.title == "trigger")
    assert [choice["display"] for choice in spec.choices(response.context["cl"])] == ["All", chosen.name]


def test_execution_admin__trigger_filter_never_names_another_users_trigger(staff_client, user, workflow, other_user):
    """A staff user choosing another user's trigger id sees neither its name nor any execution (theirs neither)."""
    _executions(_triggers(user, workflow, 2))
    theirs = _triggers(other_user, WorkflowFactory(owner=other_user), 1, prefix="secret-name")[0]
    _executions([theirs])
    response = staff_client.get(reverse(EXECUTIONS), {"trigger__id__exact": theirs.pk})
    assert response.status_code == 200
    assert "secret-name" not in response.content.decode()
    assert list(response.context["cl"].result_list) == []


def test_execution_admin__workflow_filter_applies_with_a_single_workflow(staff_client, user, workflow):
    """A user with one workflow gets no workflow choices to click, yet a link filtered by it still filters."""
    _executions(_triggers(user, workflow, 2))
    other = WorkflowFactory(owner=user)
    response = staff_client.get(reverse(EXECUTIONS), {"workflow__id__exact": other.pk})
    assert list(response.context["cl"].result_list) == []


def test_execution_admin__bad_trigger_id_is_the_admins_error_redirect(admin_client, trigger):
    """A trigger id that is not a number gets the admin's usual ?e=1 answer, not a 500."""
    response = admin_client.get(reverse(EXECUTIONS), {"trigger__id__exact": "abc"})
    assert response.status_code == 302 and "e=1" in response["Location"]


def test_trigger_timezones__sorted_zones_in_use_per_owner(user, workflow, other_user):
    """trigger_timezones lists each zone in use once, sorted; with an owner, only the zones of theirs."""
    _triggers(user, workflow, 3)  # UTC, Europe/Paris, Asia/Kolkata
    theirs = WorkflowFactory(owner=other_user)
    Trigger.objects.bulk_create([Trigger(owner=other_user, workflow=theirs, name="x", timezone="America/Denver")])
    assert selectors.trigger_timezones() == ["America/Denver", "Asia/Kolkata", "Europe/Paris", "UTC"]
    assert selectors.trigger_timezones(owner=user) == ["Asia/Kolkata", "Europe/Paris", "UTC"]
    assert selectors.trigger_timezones(owner=UserFactory()) == []


def test_trigger_admin__timezone_filter_lists_own_zones_and_filters(staff_client, user, workflow, other_user):
    """The time zone filter offers the staff user's zones only, and narrows the list to one."""
    _triggers(user, workflow, 3)
    theirs = WorkflowFactory(owner=other_user)
    Trigger.objects.bulk_create([Trigger(owner=other_user, workflow=theirs, name="x", timezone="America/Denver")])
    response = staff_client.get(reverse(TRIGGERS))
    assert "America/Denver" not in response.content.decode()
    assert "timezone=Europe%2FParis" in response.content.decode()
    filtered = staff_client.get(reverse(TRIGGERS), {"timezone": "Europe/Paris"}).context["cl"]
    assert [trigger.timezone for trigger in filtered.result_list] == ["Europe/Paris"]


# --- Indexes -------------------------------------------------------------------------------------


def _indexes(table: str) -> dict[str, dict]:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, table)


@pytest.mark.parametrize(
    "table, name, columns",
    [
        ("schedules_trigger", "trigger_name_id", ["name", "id"]),
        ("schedules_trigger", "trigger_timezone_owner", ["timezone", "owner_id"]),
        ("schedules_execution", "execution_slot", ["scheduled_for", "id"]),
        ("schedules_execution", "execution_workflow_slot", ["workflow_id", "scheduled_for", "id"]),
        ("schedules_execution", "execution_status_slot", ["status", "scheduled_for", "id"]),
        ("schedules_execution", "execution_origin_slot", ["origin", "scheduled_for", "id"]),
    ],
)
def test_list_indexes__exist_in_the_database(table, name, columns):
    """The migration built the lists' indexes with the columns the orderings need."""
    index = _indexes(table)[name]
    assert index["index"] and index["columns"] == columns


needs_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL plans")


def _plan(client, url: str) -> str:
    """The PostgreSQL plan of the page query ``url`` runs, with sequential scans priced out of reach.

    On a test-sized table the planner would rightly pick a scan and a sort; with scans and sorts
    priced out it still sorts if no index gives the order, so "no Sort" means an index matches.
    """
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    page = [
        query["sql"]
        for query in captured
        if "ORDER BY" in query["sql"] and not query["sql"].lstrip().upper().startswith("SELECT COUNT(")
    ]
    with connection.cursor() as cursor:
        for kind in ("seqscan", "bitmapscan", "sort"):
            cursor.execute(f"SET LOCAL enable_{kind} = off")
        cursor.execute(f"EXPLAIN {page[0]}")  # the trigger list then loads the page's rows by id
        return "\n".join(row[0] for row in cursor.fetchall())


@needs_postgresql
@pytest.mark.parametrize(
    "url, index",
    [
        ("/api/executions/", "execution_slot"),
        ("/api/executions/?scheduled_for_after=2026-01-01T00:00:00Z", "execution_slot"),
        ("/api/executions/?workflow={workflow}", "execution_workflow_slot"),
        ("/api/executions/?status=failed", "execution_status_slot"),
        ("/api/executions/?origin=manual", "execution_origin_slot"),
        ("/api/triggers/", "trigger_name_id"),
    ],
)
def test_list_indexes__default_orderings_read_off_an_index(staff_api, many, workflow, url, index):
    """Each list's default order, alone or after a common filter, comes from an index: no sort."""
    _executions(many[:3], at=timezone.now() - timedelta(days=1), status=ExecutionStatus.FAILED)
    _executions(many[:3], at=timezone.now() - timedelta(days=2), origin=ExecutionOrigin.MANUAL)
    plan = _plan(staff_api, url.format(workflow=workflow.pk))
    assert index in plan and "Sort" not in plan, plan
