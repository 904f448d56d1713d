"""The workflows API (/api/workflows/...), the audit trail, authentication, errors, the schema and `manage.py token`."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows import services
from workflows.models import AuditEvent, Workflow, WorkflowRun, generate_secret

LOCAL_ENDPOINT = "http://127.0.0.1:9/run"  # test settings allow loopback past the SSRF guard


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters live in the cache, keyed by user id, and ids repeat across tests."""
    cache.clear()
    yield
    cache.clear()


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api(user):
    return api_for(user)


@pytest.fixture
def other_api(other_user):
    return api_for(other_user)


def errors(response) -> dict[str, list[str]]:
    body = response.json()
    assert set(body) == {"errors"}, body
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values()), body
    return body["errors"]


def create(api, **fields):
    response = api.post("/api/workflows/", {"name": "Report", "endpoint_url": LOCAL_ENDPOINT, **fields})
    assert response.status_code == 201, response.content
    return response.json()


# --- Create, read, update, delete ------------------------------------------------------------


def test_workflow_create__generated_secret_is_returned_once(api, user):
    """A workflow created without a secret gets one, returned in the create response and never again."""
    body = create(api, headers={"X-Team": "growth"}, default_inputs={"region": "us"})
    workflow = Workflow.objects.get(pk=body["id"])
    assert body["secret"] == workflow.secret and body["secret"].startswith("whsec_")
    assert body["owner"] == user.username
    assert body["headers"] == {"X-Team": "growth"} and body["default_inputs"] == {"region": "us"}
    assert body["execution_url"] == LOCAL_ENDPOINT
    detail = api.get(f"/api/workflows/{workflow.pk}/")
    assert detail.status_code == 200
    assert "secret" not in detail.json() and workflow.secret not in detail.content.decode()
    listed = api.get("/api/workflows/").json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]


def test_workflow_create__given_secret_is_kept_and_not_echoed(api):
    """A secret given at creation is stored, and not sent back (the caller has it)."""
    secret = generate_secret()
    body = create(api, secret=secret)
    assert "secret" not in body
    assert Workflow.objects.get(pk=body["id"]).secret == secret


def test_workflow_create__all_editable_fields(api):
    """Every editable field can be set, under the model's names."""
    body = create(
        api,
        http_method="PUT",
        timeout_seconds=12,
        is_active=False,
        max_concurrency=2,
        max_attempts=5,
        min_backoff_seconds=2,
        max_backoff_seconds=60,
        max_doublings=3,
        max_retry_duration_seconds=600,
    )
    workflow = Workflow.objects.get(pk=body["id"])
    assert (workflow.http_method, workflow.timeout_seconds, workflow.is_active) == ("PUT", 12, False)
    assert (workflow.max_concurrency, workflow.max_attempts, workflow.max_doublings) == (2, 5, 3)
    assert body["max_retry_duration_seconds"] == 600


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"endpoint_url": "ftp://example.com/x"}, "endpoint_url"),
        ({"endpoint_url": "http://10.1.2.3/hook"}, "endpoint_url"),  # SSRF guard: a private address
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
        ({"http_method": "GET"}, "http_method"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers"),
        ({"headers": ["X-Team"]}, "headers"),
        ({"default_inputs": [1, 2]}, "default_inputs"),
        ({"default_inputs": {"region": "u\u0000s"}}, "default_inputs"),  # PostgreSQL's jsonb cannot store NUL
        ({"secret": "not-a-secret"}, "secret"),
        ({"name": ""}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_workflow_create__bad_input_is_400_naming_the_field(api, fields, field):
    """Bad input answers 400 with the field's messages, and nothing is created."""
    response = api.post("/api/workflows/", {"name": "Report", "endpoint_url": LOCAL_ENDPOINT, **fields})
    assert response.status_code == 400
    assert field in errors(response)
    assert not Workflow.objects.exists()


def test_workflow_create__secret_error_never_shows_the_secret(api):
    """A refused secret is not repeated in the error."""
    response = api.post("/api/workflows/", {"name": "Report", "secret": "whsec_c2VjcmV0"})
    assert response.status_code == 400
    assert "c2VjcmV0" not in response.content.decode()


def test_workflow_create__duplicate_name_is_400_on_name(api, other_api):
    """A name the owner already uses is a 400 naming "name"; another user may use it."""
    create(api)
    response = api.post("/api/workflows/", {"name": "Report"})
    assert response.status_code == 400
    assert "name" in errors(response)
    assert other_api.post("/api/workflows/", {"name": "Report"}).status_code == 201


def test_workflow_create__missing_name_is_400(api):
    """name is required."""
    response = api.post("/api/workflows/", {})
    assert response.status_code == 400 and "name" in errors(response)


def test_workflow_create__malformed_json_is_400(api):
    """A body that is not JSON is a 400 in the error format."""
    response = api.post("/api/workflows/", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert errors(response)


def test_workflow_update__put_and_patch(api, user):
    """PUT and PATCH change the given fields; a blank secret keeps the current one."""
    workflow = WorkflowFactory(owner=user)
    secret = workflow.secret
    response = api.patch(f"/api/workflows/{workflow.pk}/", {"timeout_seconds": 40, "secret": ""})
    assert response.status_code == 200, response.content
    assert response.json()["timeout_seconds"] == 40 and "secret" not in response.json()
    workflow.refresh_from_db()
    assert workflow.timeout_seconds == 40 and workflow.secret == secret
    response = api.put(f"/api/workflows/{workflow.pk}/", {"name": "Renamed", "endpoint_url": ""})
    assert response.status_code == 200, response.content
    workflow.refresh_from_db()
    assert (workflow.name, workflow.endpoint_url, workflow.timeout_seconds) == ("Renamed", "", 40)


def test_workflow_update__new_secret_replaces_and_is_not_returned(api, user):
    """A secret given on update replaces the old one; the answer does not contain it."""
    workflow = WorkflowFactory(owner=user)
    new = generate_secret()
    response = api.patch(f"/api/workflows/{workflow.pk}/", {"secret": new})
    assert response.status_code == 200 and new not in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.secret == new


def test_workflow_update__bad_input_is_400(api, user):
    """Validation on update answers 400 by field and changes nothing."""
    workflow = WorkflowFactory(owner=user)
    WorkflowFactory(owner=user, name="Taken")
    for body, field in (({"timeout_seconds": 301}, "timeout_seconds"), ({"name": "Taken"}, "name")):
        response = api.patch(f"/api/workflows/{workflow.pk}/", body)
        assert response.status_code == 400 and field in errors(response)
    workflow.refresh_from_db()
    assert workflow.timeout_seconds == 5


def test_workflow_update__put_needs_the_name(api, user):
    """PUT is a whole update: name is required."""
    workflow = WorkflowFactory(owner=user)
    response = api.put(f"/api/workflows/{workflow.pk}/", {"timeout_seconds": 9})
    assert response.status_code == 400 and "name" in errors(response)


def test_workflow_delete__204_and_gone(api, user):
    """DELETE removes the workflow (and its runs)."""
    workflow = WorkflowFactory(owner=user)
    WorkflowRun.objects.create(workflow=workflow, idempotency_key="k")
    assert api.delete(f"/api/workflows/{workflow.pk}/").status_code == 204
    assert not Workflow.objects.exists() and not WorkflowRun.objects.exists()
    assert api.get(f"/api/workflows/{workflow.pk}/").status_code == 404


def test_workflow_delete__with_triggers_is_409(api, user):
    """A workflow that triggers still run cannot be deleted: 409 naming workflow."""
    workflow = WorkflowFactory(owner=user)
    TriggerFactory(workflow=workflow)
    response = api.delete(f"/api/workflows/{workflow.pk}/")
    assert response.status_code == 409
    assert "workflow" in errors(response)
    assert Workflow.objects.filter(pk=workflow.pk).exists()


def test_workflow_list__filters_ordering_and_pagination(api, user):
    """The list filters by name (part) and is_active, orders by ?ordering= and pages by ?page_size=."""
    WorkflowFactory(owner=user, name="Alpha report")
    WorkflowFactory(owner=user, name="Beta report", is_active=False)
    WorkflowFactory(owner=user, name="Gamma")
    names = lambda response: [row["name"] for row in response.json()["results"]]  # noqa: E731
    assert names(api.get("/api/workflows/?name=report")) == ["Alpha report", "Beta report"]
    assert names(api.get("/api/workflows/?is_active=false")) == ["Beta report"]
    assert names(api.get("/api/workflows/?ordering=-name")) == ["Gamma", "Beta report", "Alpha report"]
    page = api.get("/api/workflows/?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert api.get(page["next"]).json()["results"][0]["name"] == "Gamma"
    bad = api.get("/api/workflows/?http_method=GET")
    assert bad.status_code == 400 and "http_method" in errors(bad)


# --- Secrets ------------------------------------------------------------------------------------


def test_workflow_rotate_secret__new_secret_returned_once(api, user):
    """rotate-secret answers the new secret and the end of the overlap; nothing else ever shows either."""
    workflow = WorkflowFactory(owner=user)
    old = workflow.secret
    response = api.post(f"/api/workflows/{workflow.pk}/rotate-secret/", {"overlap_seconds": 3600})
    assert response.status_code == 200, response.content
    body = response.json()
    workflow.refresh_from_db()
    assert body["secret"] == workflow.secret != old
    assert workflow.valid_previous_secret() == old and body["previous_secret_expires_at"]
    assert set(body) == {"secret", "previous_secret_expires_at"}
    detail = api.get(f"/api/workflows/{workflow.pk}/").content.decode()
    assert old not in detail and workflow.secret not in detail and '"previous_secret"' not in detail


def test_workflow_rotate_secret__default_overlap_and_given_secret(api, user):
    """Without a body the overlap is a day; a given secret becomes the new one."""
    workflow = WorkflowFactory(owner=user)
    assert api.post(f"/api/workflows/{workflow.pk}/rotate-secret/").status_code == 200
    new = generate_secret()
    response = api.post(f"/api/workflows/{workflow.pk}/rotate-secret/", {"secret": new, "overlap_seconds": 0})
    assert response.status_code == 200 and response.json()["secret"] == new
    assert response.json()["previous_secret_expires_at"] is None


@pytest.mark.parametrize("overlap", [-1, 7 * 24 * 3600 + 1, "a day"])
def test_workflow_rotate_secret__bad_overlap_is_400(api, user, overlap):
    """overlap_seconds outside 0..7 days is a 400 naming it, and the secret stays."""
    workflow = WorkflowFactory(owner=user)
    secret = workflow.secret
    response = api.post(f"/api/workflows/{workflow.pk}/rotate-secret/", {"overlap_seconds": overlap})
    assert response.status_code == 400 and "overlap_seconds" in errors(response)
    workflow.refresh_from_db()
    assert workflow.secret == secret


def test_secrets__never_in_any_other_response(api, user):
    """After create and rotate, no read or write answer contains the current or previous secret."""
    created = create(api)
    first = created["secret"]
    pk = created["id"]
    second = api.post(f"/api/workflows/{pk}/rotate-secret/", {"overlap_seconds": 3600}).json()["secret"]
    trigger = api.post("/api/triggers/", {"name": "t", "workflow": pk, "cron": "0 9 * * *"})
    assert trigger.status_code == 201
    WorkflowRun.objects.create(workflow_id=pk, idempotency_key="k")
    answers = [
        trigger,
        api.get("/api/workflows/"),
        api.get(f"/api/workflows/{pk}/"),
        api.patch(f"/api/workflows/{pk}/", {"timeout_seconds": 7}),
        api.put(f"/api/workflows/{pk}/", {"name": "Report"}),
        api.get(f"/api/workflows/{pk}/stats/"),
        api.get(f"/api/workflows/{pk}/runs/"),
        api.get("/api/triggers/"),
        api.get(f"/api/triggers/{trigger.json()['id']}/"),
        api.post(f"/api/triggers/{trigger.json()['id']}/run/"),
        api.get("/api/executions/"),
    ]
    for response in answers:
        assert response.status_code < 300, response.content
        text = response.content.decode()
        assert first not in text and second not in text
        assert '"secret"' not in text and '"previous_secret"' not in text


# --- Runs ---------------------------------------------------------------------------------------


def test_workflow_runs__get_lists_the_owners_runs(api, user):
    """GET /api/workflows/<id>/runs/ lists that workflow's runs, newest first, paginated."""
    workflow = WorkflowFactory(owner=user)
    WorkflowFactory(owner=user).runs.create(idempotency_key="elsewhere")
    for key in ("a", "b", "c"):
        workflow.runs.create(idempotency_key=key, inputs={"key": key})
    response = api.get(f"/api/workflows/{workflow.pk}/runs/?page_size=2")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3 and len(body["results"]) == 2
    assert {row["workflow"] for row in body["results"]} == {workflow.pk}
    filtered = api.get(f"/api/workflows/{workflow.pk}/runs/?idempotency_key=b").json()
    assert [row["inputs"] for row in filtered["results"]] == [{"key": "b"}]


def test_workflow_runs__unknown_workflow_is_404(api, db):
    """The run list of a workflow that does not exist is 404."""
    assert api.get("/api/workflows/999999/runs/").status_code == 404


# --- Ownership ----------------------------------------------------------------------------------


@pytest.fixture
def theirs(other_user):
    """Another user's workflow with a trigger and a run."""
    workflow = WorkflowFactory(owner=other_user, name="Theirs")
    TriggerFactory(workflow=workflow)
    workflow.runs.create(idempotency_key="their-run")
    return workflow


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/workflows/{pk}/", None),
        ("put", "/api/workflows/{pk}/", {"name": "Mine now"}),
        ("patch", "/api/workflows/{pk}/", {"is_active": False}),
        ("delete", "/api/workflows/{pk}/", None),
        ("post", "/api/workflows/{pk}/rotate-secret/", {"overlap_seconds": 0}),
        ("get", "/api/workflows/{pk}/stats/", None),
        ("get", "/api/workflows/{pk}/runs/", None),
        ("get", "/api/executions/stats/?workflow={pk}", None),
    ],
)
def test_workflow_of_another_user__404_and_unchanged(api, theirs, method, path, body):
    """Another user's workflow does not exist for you: 404 everywhere, and nothing about it changes."""
    secret = theirs.secret
    response = getattr(api, method)(path.format(pk=theirs.pk), body)
    assert response.status_code == 404
    assert errors(response) == {"detail": ["not found."]}
    theirs.refresh_from_db()
    assert (theirs.name, theirs.is_active, theirs.secret) == ("Theirs", True, secret)


def test_workflow_of_another_user__absent_from_lists(api, user, theirs):
    """Lists hold only your workflows, whatever the filters."""
    WorkflowFactory(owner=user, name="Mine")
    assert [row["name"] for row in api.get("/api/workflows/").json()["results"]] == ["Mine"]
    assert api.get("/api/workflows/?name=Theirs").json()["count"] == 0


def test_workflow_of_another_user__404_same_as_missing(api, theirs):
    """Another user's id answers exactly like an id that does not exist."""
    mine = api.get(f"/api/workflows/{theirs.pk}/")
    missing = api.get("/api/workflows/999999/")
    assert (mine.status_code, mine.json()) == (missing.status_code, missing.json())


def test_staff__see_every_workflow(theirs):
    """Staff see and read everyone's workflows."""
    staff = api_for(UserFactory(is_staff=True))
    assert staff.get("/api/workflows/").json()["count"] == 1
    assert staff.get(f"/api/workflows/{theirs.pk}/").status_code == 200
    assert staff.get(f"/api/workflows/{theirs.pk}/runs/").json()["count"] == 1


# --- Audit trail --------------------------------------------------------------------------------


def trail(object_type: str, pk) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type=object_type, object_id=str(pk)).order_by("at", "id"))


def test_workflow_api_actions__audited_with_the_user_and_source_api(api, user):
    """Create, update, rotate-secret and delete through the API record the user as actor and "api" as source."""
    pk = create(api)["id"]
    assert api.patch(f"/api/workflows/{pk}/", {"timeout_seconds": 40}).status_code == 200
    assert api.post(f"/api/workflows/{pk}/rotate-secret/", {"overlap_seconds": 0}).status_code == 200
    assert api.delete(f"/api/workflows/{pk}/").status_code == 204
    events = trail("workflow", pk)
    assert [event.action for event in events] == ["created", "updated", "secret_rotated", "deleted"]
    assert all((event.actor, event.source, event.owner) == (user, "api", user) for event in events)
    assert events[1].changes == {"timeout_seconds": [30, 40]}


def test_audit_list__your_events_newest_first_in_the_api_format(api, user):
    """GET /api/audit/ lists the events of your objects, newest first, with the actor's username."""
    pk = create(api)["id"]
    api.patch(f"/api/workflows/{pk}/", {"is_active": False})
    services.workflow_create(owner=user, name="From code")  # no actor: the scheduler's own
    body = api.get("/api/audit/").json()
    assert body["count"] == 3
    first, second, third = body["results"]
    assert (first["action"], first["object_repr"], first["actor"], first["source"]) == (
        "created",
        "From code",
        None,
        "scheduler",
    )
    assert (second["action"], second["actor"], second["source"]) == ("updated", user.username, "api")
    assert second["changes"] == {"is_active": [True, False]}
    assert (third["object_type"], third["object_id"]) == ("workflow", str(pk))
    assert set(first) == {
        "id",
        "at",
        "actor",
        "source",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes",
    }
    oldest_first = api.get("/api/audit/?ordering=at").json()["results"]
    assert [row["id"] for row in oldest_first] == [third["id"], second["id"], first["id"]]


def test_audit_list__filters(api, user):
    """object_type, object_id, action, source, actor and the at range narrow the list; bad values are 400."""
    first = create(api, name="First")["id"]
    create(api, name="Second")
    api.patch(f"/api/workflows/{first}/", {"timeout_seconds": 9})
    services.workflow_create(owner=user, name="From code")
    middle = AuditEvent.objects.get(action="updated").at

    def reprs(query: str) -> list[str]:
        response = api.get(f"/api/audit/?{query}")
        assert response.status_code == 200, response.content
        return [row["object_repr"] for row in response.json()["results"]]

    assert reprs(f"object_type=workflow&object_id={first}") == ["First", "First"]
    assert reprs("action=updated") == ["First"]
    assert reprs("source=scheduler") == ["From code"]
    assert reprs(f"actor={user.username}") == ["First", "Second", "First"]
    assert reprs("object_type=trigger") == []
    assert reprs(f"at_after={middle.isoformat().replace('+00:00', 'Z')}") == ["From code", "First"]
    assert reprs(f"at_before={middle.isoformat().replace('+00:00', 'Z')}") == ["First", "Second", "First"]
    for bad, field in (("object_type=user", "object_type"), ("source=web", "source"), ("at_after=yesterday", "at")):
        response = api.get(f"/api/audit/?{bad}")
        assert response.status_code == 400 and field in errors(response), bad


def test_audit_list__another_users_events_are_invisible(api, other_api, user, other_user):
    """Each user sees only the events of their own objects, whatever the filters; staff see everyone's."""
    mine = create(api, name="Mine")["id"]
    theirs = create(other_api, name="Theirs")["id"]
    assert [row["object_repr"] for row in api.get("/api/audit/").json()["results"]] == ["Mine"]
    assert api.get(f"/api/audit/?object_id={theirs}&object_type=workflow").json()["count"] == 0
    assert api.get(f"/api/audit/?actor={other_user.username}").json()["count"] == 0
    assert [row["object_repr"] for row in other_api.get("/api/audit/").json()["results"]] == ["Theirs"]
    staff = api_for(UserFactory(is_staff=True))
    assert {row["object_id"] for row in staff.get("/api/audit/").json()["results"]} == {str(mine), str(theirs)}


def test_audit_list__read_only_and_needs_a_token(api, db):
    """The trail cannot be written through the API (405), and needs authentication (401)."""
    assert api.post("/api/audit/", {"action": "created"}).status_code == 405
    assert api.delete("/api/audit/").status_code == 405
    assert APIClient().get("/api/audit/").status_code == 401


def test_workflow_audit__the_workflows_events_only(api, user):
    """GET /api/workflows/<id>/audit/ lists that workflow's events, newest first, with the trail's filters."""
    pk = create(api, name="Report")["id"]
    create(api, name="Other")
    api.patch(f"/api/workflows/{pk}/", {"timeout_seconds": 9})
    response = api.get(f"/api/workflows/{pk}/audit/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["action"] for row in body["results"]] == ["updated", "created"]
    assert {row["object_id"] for row in body["results"]} == {str(pk)}
    assert api.get(f"/api/workflows/{pk}/audit/?action=created").json()["count"] == 1


def test_workflow_audit__another_users_workflow_is_404(api, other_api):
    """Another user's workflow has no trail for you: 404, the same as a missing one."""
    theirs = create(other_api, name="Theirs")["id"]
    response = api.get(f"/api/workflows/{theirs}/audit/")
    assert response.status_code == 404 and errors(response) == {"detail": ["not found."]}
    assert api.get("/api/workflows/999999/audit/").json() == response.json()


# --- Authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/workflows/"),
        ("post", "/api/workflows/"),
        ("get", "/api/workflows/1/"),
        ("post", "/api/workflows/1/rotate-secret/"),
        ("get", "/api/workflows/1/runs/"),
        ("get", "/api/workflows/1/stats/"),
        ("get", "/api/triggers/"),
        ("post", "/api/triggers/preview/"),
        ("get", "/api/executions/"),
        ("get", "/api/executions/stats/"),
        ("get", "/api/audit/"),
        ("get", "/api/workflows/1/audit/"),
        ("get", "/api/triggers/1/audit/"),
    ],
)
def test_unauthenticated__401_with_www_authenticate(db, method, path):
    """Without credentials every endpoint (but health, schema and the signed POST) is 401 asking for a Token."""
    response = getattr(APIClient(), method)(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "detail" in errors(response)


def test_wrong_token__401(db):
    """A token that does not exist is 401."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    assert client.get("/api/workflows/").status_code == 401


def test_session_authentication__works_for_the_browser(user):
    """A logged-in browser session is accepted too."""
    client = APIClient()
    assert client.login(username=user.username, password="password")
    assert client.get("/api/workflows/").status_code == 200


def test_session_authentication__writes_need_csrf(user):
    """With a session (not a token) a write needs the CSRF token: 403 without it."""
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password="password")
    response = client.post("/api/workflows/", {"name": "x"})
    assert response.status_code == 403
    assert "detail" in errors(response)


# --- Throttling and errors ----------------------------------------------------------------------


@pytest.fixture
def small_rates(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"writes": "2/min", "runs": "1/min"},
    }
    cache.clear()


def test_throttle__writes_over_the_rate_are_429_with_retry_after(api, other_api, small_rates):
    """The third write in a minute is 429 with Retry-After; reads and other users are not affected."""
    assert create(api, name="one") and create(api, name="two")
    response = api.post("/api/workflows/", {"name": "three"})
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert "detail" in errors(response)
    assert api.get("/api/workflows/").status_code == 200
    assert other_api.post("/api/workflows/", {"name": "three"}).status_code == 201


def test_unknown_api_path__json_404(client, db):
    """A path under /api/ that does not exist answers 404 in the error format."""
    response = client.get("/api/no-such-thing/")
    assert response.status_code == 404
    assert response.json() == {"errors": {"detail": ["not found."]}}


def test_method_not_allowed__405_in_the_error_format(api, user):
    """A method an endpoint does not have is 405 in the error format."""
    workflow = WorkflowFactory(owner=user)
    response = api.post(f"/api/workflows/{workflow.pk}/")
    assert response.status_code == 405
    assert "detail" in errors(response)


def test_server_error_handler__json_under_api(rf):
    """handler500 answers JSON for /api/ paths."""
    from scheduler_project.api import server_error

    response = server_error(rf.get("/api/workflows/"))
    assert response.status_code == 500
    assert json.loads(response.content) == {"errors": {"detail": ["internal error; it has been logged."]}}


# --- Schema -------------------------------------------------------------------------------------


def test_schema__valid_openapi_with_every_resource(client, db):
    """/api/schema/ is valid OpenAPI 3 listing the resources, and /api/docs/ serves the interactive page."""
    from drf_spectacular.validation import validate_schema

    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/workflows/",
        "/api/workflows/{id}/",
        "/api/workflows/{id}/rotate-secret/",
        "/api/workflows/{workflow_id}/runs/",
        "/api/triggers/{id}/pause/",
        "/api/triggers/preview/",
        "/api/executions/stats/",
        "/api/health/",
        "/api/audit/",
        "/api/workflows/{id}/audit/",
        "/api/triggers/{id}/audit/",
    ):
        assert path in schema["paths"], path
    assert "security" not in schema["paths"]["/api/workflows/{workflow_id}/runs/"]["post"]
    workflow = schema["components"]["schemas"]["Workflow"]["properties"]
    assert "secret" not in workflow and "previous_secret" not in workflow
    assert "secret" in schema["components"]["schemas"]["WorkflowRequest"]["properties"]
    assert client.get("/api/docs/").status_code == 200


def test_schema__generates_without_warnings(tmp_path):
    """Every view and field has a type the generator can name (no warning, no error)."""
    call_command("spectacular", "--file", str(tmp_path / "schema.yaml"), "--validate", "--fail-on-warn")


# --- manage.py token ----------------------------------------------------------------------------


def token_command(*args: str) -> str:
    out = StringIO()
    call_command("token", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_token_command__create_use_replace_revoke(user):
    """create prints a working key; a second create needs --replace; revoke makes it stop working."""
    key = token_command("create", user.username)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/workflows/").status_code == 200
    with pytest.raises(CommandError, match="already has a token"):
        token_command("create", user.username)
    new_key = token_command("create", user.username, "--replace")
    assert new_key != key
    assert client.get("/api/workflows/").status_code == 401
    assert "Revoked" in token_command("revoke", user.username)
    client.credentials(HTTP_AUTHORIZATION=f"Token {new_key}")
    assert client.get("/api/workflows/").status_code == 401
    with pytest.raises(CommandError, match="has no token"):
        token_command("revoke", user.username)


def test_token_command__unknown_user(db):
    """An unknown username is a clear error."""
    with pytest.raises(CommandError, match="no user 'ghost'"):
        token_command("create", "ghost")
    assert not get_user_model().objects.exists()


@pytest.mark.parametrize(
    "query",
    [
        "at_before=0597-11-11T16:14:15-17:49",  # PostgreSQL refuses offsets beyond +-15:59
        "at_after=0001-01-01T00:00:00%2B14:00",  # overflows when turned into UTC
        "at_after=9999-12-31T23:59:59-14:00",
    ],
)
def test_audit_api__out_of_range_time_filter_is_400(api, query):
    """A time filter Python parses but the database cannot compare is bad input (400 naming it), not a 500."""
    response = api.get(f"/api/audit/?{query}")
    assert response.status_code == 400, response.content
    assert "at" in response.json()["errors"]
