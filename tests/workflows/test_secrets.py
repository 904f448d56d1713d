"""Signing secrets: encrypted at rest, never shown or logged, rotated with an overlap in which both verify."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings as django_settings
from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.core.exceptions import FieldError, ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scheduler_project.env import derive_fernet_key, env_fernet_keys
from tests.factories import UserFactory, WorkflowFactory
from workflows import services
from workflows.client import WorkflowCall, call_workflow, encode_body, sign
from workflows.exceptions import SecretUndecryptable, SignatureInvalid
from workflows.models import Workflow, WorkflowRun, generate_secret

BASE_DIR = Path(__file__).resolve().parents[2]
PAYLOAD = {"workflow_id": 1, "execution_id": "e-1", "attempt": 1, "inputs": {"report": "weekly"}}


def raw_columns(workflow: Workflow) -> tuple[str, str]:
    """The secret and previous_secret columns as the database holds them (no field conversion)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT secret, previous_secret FROM {Workflow._meta.db_table} WHERE id = %s",  # noqa: S608
            [workflow.pk],
        )
        return cursor.fetchone()


def signed(secret: str, payload: object = PAYLOAD, *, msg_id: str = "key-1") -> tuple[str, dict[str, str]]:
    body = json.dumps(payload)
    at = datetime.now(UTC)
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body),
    }


def post_run(client, workflow: Workflow, secret: str, *, msg_id: str = "key-1"):
    body, headers = signed(secret, msg_id=msg_id)
    url = reverse("workflow-runs", kwargs={"workflow_id": workflow.pk})
    return client.post(url, data=body, content_type="application/json", headers=headers)


def expire_overlap(workflow: Workflow) -> None:
    """Time travel: the rotation overlap ended a second ago."""
    Workflow.objects.filter(pk=workflow.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    workflow.refresh_from_db()


def run_command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- encryption at rest -------------------------------------------------------------------------


def test_encrypted_field__raw_column_is_ciphertext(workflow):
    """The secret column holds a Fernet token of the secret, never the secret or its base64 part."""
    raw_secret, raw_previous = raw_columns(workflow)
    assert workflow.secret.startswith("whsec_")
    assert raw_secret != workflow.secret
    assert "whsec_" not in raw_secret
    assert workflow.secret.removeprefix("whsec_") not in raw_secret
    keys = [Fernet(key) for key in django_settings.SCHEDULER_SECRET_KEYS]
    assert keys[0].decrypt(raw_secret.encode()).decode() == workflow.secret
    assert raw_previous == ""


def test_encrypted_field__round_trip_decrypts_on_load(user):
    """Saved and loaded again (get, values_list, refresh), the secret is the plaintext that was set."""
    secret = generate_secret()
    workflow = services.workflow_create(owner=user, name="Round trip", secret=secret)
    assert Workflow.objects.get(pk=workflow.pk).secret == secret
    assert list(Workflow.objects.values_list("secret", flat=True)) == [secret]
    workflow.secret = "stale"
    workflow.refresh_from_db()
    assert workflow.secret == secret


def test_encrypted_field__same_secret_encrypts_differently(user):
    """Fernet tokens are randomised: two rows with the same secret have different columns."""
    secret = generate_secret()
    one = WorkflowFactory(owner=user, secret=secret)
    two = WorkflowFactory(owner=user, secret=secret)
    assert raw_columns(one)[0] != raw_columns(two)[0]


def test_encrypted_field__lookups_other_than_isnull_refused(workflow):
    """Ciphertext cannot be compared in SQL: filtering on a secret is an error, not a silent no-match."""
    with pytest.raises(FieldError):
        list(Workflow.objects.filter(secret=workflow.secret))
    assert Workflow.objects.filter(secret__isnull=False).count() == 1


def test_encrypted_field__rotated_secret_column_is_ciphertext_too(workflow):
    """After a rotation the previous secret is stored encrypted as well."""
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    raw_secret, raw_previous = raw_columns(workflow)
    assert raw_previous and old not in raw_previous and old.removeprefix("whsec_") not in raw_previous
    assert new not in raw_secret
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert (loaded.secret, loaded.previous_secret) == (new, old)


# --- the encryption keys --------------------------------------------------------------------------


def test_secret_keys__old_key_second_still_decrypts(settings, user):
    """A value encrypted with an old key still decrypts once a new key is first; new writes use the new key."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SCHEDULER_SECRET_KEYS = [old_key]
    workflow = WorkflowFactory(owner=user)
    secret = workflow.secret
    settings.SCHEDULER_SECRET_KEYS = [new_key, old_key]
    assert Workflow.objects.get(pk=workflow.pk).secret == secret
    with pytest.raises(InvalidToken):
        Fernet(new_key).decrypt(raw_columns(workflow)[0].encode())
    fresh = WorkflowFactory(owner=user)
    Fernet(new_key).decrypt(raw_columns(fresh)[0].encode())


def test_secret_keys__reencrypt_command_moves_rows_to_first_key(settings, user):
    """`workflow reencrypt-secrets` rewrites every secret with the first key, so the old key can go."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SCHEDULER_SECRET_KEYS = [old_key]
    workflow = WorkflowFactory(owner=user)
    services.workflow_rotate_secret(workflow=workflow)
    secret, previous = workflow.secret, workflow.previous_secret
    settings.SCHEDULER_SECRET_KEYS = [new_key, old_key]
    out = run_command("workflow", "reencrypt-secrets")
    assert "Re-encrypted the secrets of 1 workflow(s)" in out
    assert secret not in out and previous not in out
    settings.SCHEDULER_SECRET_KEYS = [new_key]
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert (loaded.secret, loaded.previous_secret) == (secret, previous)


def test_secret_keys__removed_key_is_a_clear_error_without_the_value(settings, workflow):
    """A row no configured key decrypts raises SecretUndecryptable naming the setting, not the value."""
    secret = workflow.secret
    settings.SCHEDULER_SECRET_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SecretUndecryptable) as caught:
        Workflow.objects.get(pk=workflow.pk)
    assert "SCHEDULER_SECRET_KEYS" in str(caught.value)
    assert secret not in str(caught.value)


def test_env_fernet_keys__several_keys_in_order(monkeypatch):
    """A comma-separated list (spaces allowed) is returned in order: the first one encrypts."""
    one, two = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("SCHEDULER_SECRET_KEYS", f"{one}, {two}")
    assert env_fernet_keys("SCHEDULER_SECRET_KEYS", fallback_secret=None) == [one, two]


@pytest.mark.parametrize("value", [None, "", " , "])
def test_env_fernet_keys__missing_without_fallback_names_the_variable(monkeypatch, value):
    """Unset (or empty) with no local fallback stops start-up with a message naming the variable."""
    if value is None:
        monkeypatch.delenv("SCHEDULER_SECRET_KEYS", raising=False)
    else:
        monkeypatch.setenv("SCHEDULER_SECRET_KEYS", value)
    with pytest.raises(ImproperlyConfigured, match="SCHEDULER_SECRET_KEYS"):
        env_fernet_keys("SCHEDULER_SECRET_KEYS", fallback_secret=None)


@pytest.mark.parametrize("bad", ["not-a-key", "x" * 44, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_env_fernet_keys__malformed_key_names_variable_and_position_not_value(monkeypatch, bad):
    """A key that is not a Fernet key is named by the variable and its position; the value is not echoed."""
    good = Fernet.generate_key().decode()
    monkeypatch.setenv("SCHEDULER_SECRET_KEYS", f"{good},{bad}")
    with pytest.raises(ImproperlyConfigured, match=r"SCHEDULER_SECRET_KEYS: key 2 of 2") as caught:
        env_fernet_keys("SCHEDULER_SECRET_KEYS", fallback_secret="anything")
    assert bad not in str(caught.value)


def test_env_fernet_keys__local_fallback_derives_a_stable_key(monkeypatch):
    """Unset with DEBUG on: one valid key derived from SECRET_KEY, the same in every process, per SECRET_KEY."""
    monkeypatch.delenv("SCHEDULER_SECRET_KEYS", raising=False)
    (key,) = env_fernet_keys("SCHEDULER_SECRET_KEYS", fallback_secret="local-secret")
    Fernet(key)
    assert key == derive_fernet_key("local-secret") != derive_fernet_key("other-secret")
    assert "local-secret" not in key


def _start_settings(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SCHEDULER_SECRET_KEYS", "DEBUG", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}
    }
    env.update(DJANGO_SETTINGS_MODULE="scheduler_project.settings", SCHEDULER_DATA_DIR=str(tmp_path), **environ)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings__debug_off_without_secret_keys_stops_start_up(tmp_path):
    """With DEBUG off and no SCHEDULER_SECRET_KEYS the settings raise ImproperlyConfigured naming it."""
    result = _start_settings(tmp_path, DEBUG="0", SECRET_KEY="a-real-secret-key-for-this-test-0123456789")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SCHEDULER_SECRET_KEYS" in result.stderr


def test_settings__debug_off_with_malformed_key_stops_start_up(tmp_path):
    """A malformed key stops start-up too, naming the variable."""
    result = _start_settings(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="a-real-secret-key-for-this-test-0123456789",
        SCHEDULER_SECRET_KEYS="too-short",
    )
    assert result.returncode != 0
    assert "SCHEDULER_SECRET_KEYS: key 1 of 1 is not a Fernet key" in result.stderr
    assert "too-short" not in result.stderr


def test_settings__debug_off_with_secret_keys_starts(tmp_path):
    """With a valid key set, DEBUG off starts."""
    result = _start_settings(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="a-real-secret-key-for-this-test-0123456789",
        SCHEDULER_SECRET_KEYS=Fernet.generate_key().decode(),
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


# --- the data migration -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_0003__encrypts_plaintext_rows_and_back():
    """Migrating forwards encrypts existing plaintext secrets; backwards restores the plaintext."""
    owner = UserFactory()
    secret = generate_secret()
    before, after = ("workflows", "0002_semantics"), ("workflows", "0003_encrypted_secrets")
    table = Workflow._meta.db_table
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([before])
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (owner_id, name, endpoint_url, http_method, headers, secret, timeout_seconds,"  # noqa: S608
                " default_inputs, is_active, max_concurrency, max_attempts, min_backoff_seconds, max_backoff_seconds,"
                " max_doublings, max_retry_duration_seconds, created_at, updated_at)"
                " VALUES (%s, 'legacy', '', 'POST', '{}', %s, 30, '{}', %s, NULL, 3, 5, 300, 5, 0, %s, %s)",
                [owner.pk, secret, True, timezone.now(), timezone.now()],
            )
        executor = MigrationExecutor(connection)
        executor.migrate([after])
        # Only the columns 0003 has: the current model has more (e.g. 0007's definition).
        legacy = Workflow.objects.only("id", "name", "secret").get(name="legacy")
        assert legacy.secret == secret
        assert raw_columns(legacy)[0] != secret and "whsec_" not in raw_columns(legacy)[0]
        executor = MigrationExecutor(connection)
        executor.migrate([before])
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT secret FROM {table} WHERE name = 'legacy'")  # noqa: S608
            assert cursor.fetchone()[0] == secret
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


# --- rotation ----------------------------------------------------------------------------------


def test_workflow_rotate_secret__keeps_old_one_for_the_overlap(workflow):
    """Rotation returns a new valid secret, keeps the old one as previous until now + overlap."""
    old = workflow.secret
    now = timezone.now()
    new = services.workflow_rotate_secret(workflow=workflow, overlap_seconds=3600, now=now)
    assert new.startswith("whsec_") and new != old
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert (loaded.secret, loaded.previous_secret) == (new, old)
    assert loaded.previous_secret_expires_at == now + timedelta(hours=1)
    assert (workflow.secret, workflow.previous_secret) == (new, old)  # the caller's instance is current
    assert loaded.valid_secrets(now=now) == [new, old]
    assert loaded.valid_secrets(now=now + timedelta(hours=1)) == [new]


def test_workflow_rotate_secret__default_overlap_is_a_day(workflow):
    """Without overlap_seconds the old secret verifies for 24 hours."""
    now = timezone.now()
    services.workflow_rotate_secret(workflow=workflow, now=now)
    assert workflow.previous_secret_expires_at == now + timedelta(days=1)


def test_workflow_rotate_secret__zero_overlap_drops_old_secret(workflow):
    """overlap_seconds=0 replaces the secret at once: no previous secret is kept."""
    new = services.workflow_rotate_secret(workflow=workflow, overlap_seconds=0)
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert (loaded.secret, loaded.previous_secret, loaded.previous_secret_expires_at) == (new, "", None)
    assert raw_columns(loaded)[1] == ""


def test_workflow_rotate_secret__takes_a_given_secret(workflow):
    """A given new_secret is the one stored and returned."""
    given = generate_secret()
    assert services.workflow_rotate_secret(workflow=workflow, new_secret=given) == given
    assert Workflow.objects.get(pk=workflow.pk).secret == given


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"overlap_seconds": -1}, "overlap_seconds", id="negative-overlap"),
        pytest.param({"overlap_seconds": 8 * 86400}, "overlap_seconds", id="overlap-over-a-week"),
        pytest.param({"new_secret": "whsec_short"}, "secret", id="malformed-secret"),
    ],
)
def test_workflow_rotate_secret__invalid_input_changes_nothing(workflow, kwargs, field):
    """A bad overlap or secret is a ValidationError on that field and the stored secret stays."""
    old = workflow.secret
    with pytest.raises(ValidationError) as caught:
        services.workflow_rotate_secret(workflow=workflow, **kwargs)
    assert field in caught.value.message_dict
    assert "whsec_short" not in str(caught.value)
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert (loaded.secret, loaded.previous_secret) == (old, "")


def test_workflow_rotate_secret__same_secret_refused(workflow):
    """Rotating to the current secret is refused (it would retire nothing)."""
    with pytest.raises(ValidationError) as caught:
        services.workflow_rotate_secret(workflow=workflow, new_secret=workflow.secret)
    assert "secret" in caught.value.message_dict


def test_workflow_rotate_secret__twice_drops_the_oldest(workflow):
    """A rotation during an overlap keeps only the secret just replaced."""
    first = workflow.secret
    second = services.workflow_rotate_secret(workflow=workflow)
    third = services.workflow_rotate_secret(workflow=workflow)
    assert Workflow.objects.get(pk=workflow.pk).valid_secrets() == [third, second]
    assert first not in Workflow.objects.get(pk=workflow.pk).valid_secrets()


def test_workflow_update__new_secret_ends_the_overlap(workflow):
    """Typing a new secret (e.g. after a leak) replaces it at once: the rotated-out secret stops verifying."""
    services.workflow_rotate_secret(workflow=workflow)
    typed = generate_secret()
    services.workflow_update(workflow=workflow, secret=typed)
    loaded = Workflow.objects.get(pk=workflow.pk)
    assert loaded.valid_secrets() == [typed]
    assert (loaded.previous_secret, loaded.previous_secret_expires_at) == ("", None)


def test_workflow_update__blank_secret_keeps_the_overlap(workflow):
    """An edit that leaves the secret blank keeps a running overlap."""
    services.workflow_rotate_secret(workflow=workflow)
    services.workflow_update(workflow=workflow, secret="", name="Renamed")
    assert len(Workflow.objects.get(pk=workflow.pk).valid_secrets()) == 2


# --- the built-in endpoint during and after the overlap ----------------------------------------


def test_workflow_runs__both_secrets_verify_during_overlap(client, workflow):
    """While the overlap lasts, requests signed with the new or the old secret are accepted."""
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    assert post_run(client, workflow, new, msg_id="new-1").status_code == 202
    assert post_run(client, workflow, old, msg_id="old-1").status_code == 202
    assert post_run(client, workflow, generate_secret(), msg_id="other-1").status_code == 401
    assert WorkflowRun.objects.count() == 2


def test_workflow_runs__only_new_secret_after_overlap(client, workflow):
    """Once the overlap has ended the old secret is refused (401) and the new one still works."""
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    expire_overlap(workflow)
    response = post_run(client, workflow, old, msg_id="old-1")
    assert response.status_code == 401
    assert old not in response.content.decode() and new not in response.content.decode()
    assert post_run(client, workflow, new, msg_id="new-1").status_code == 202
    assert list(WorkflowRun.objects.values_list("idempotency_key", flat=True)) == ["new-1"]


def test_run_signature_verify__expiry_checked_at_use(workflow):
    """With no cleanup job, the expiry is checked when verifying (time travel with now=)."""
    old = workflow.secret
    now = timezone.now()
    services.workflow_rotate_secret(workflow=workflow, overlap_seconds=60, now=now)
    body, headers = signed(old)
    assert services.run_signature_verify(workflow=workflow, body=body.encode(), headers=headers, now=now)
    with pytest.raises(SignatureInvalid) as caught:
        services.run_signature_verify(
            workflow=workflow, body=body.encode(), headers=headers, now=now + timedelta(seconds=60)
        )
    assert old not in str(caught.value) and workflow.secret not in str(caught.value)


# --- outbound calls ----------------------------------------------------------------------------


class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        payload = b'{"run_id": "run-1"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    """An HTTP endpoint on 127.0.0.1 that records each request's headers and body."""
    received: list[tuple[dict[str, str], bytes]] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (_Capture,), {"received": received}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/run", received
    httpd.shutdown()
    httpd.server_close()


def _call(url: str, workflow: Workflow) -> WorkflowCall:
    return WorkflowCall(
        url=url,
        method="POST",
        secret=workflow.secret,
        previous_secret=workflow.valid_previous_secret(),
        timeout_seconds=5,
        idempotency_key="0b7c7e2e-5a3c-4c55-9d4b-3f1e0d9f7a21",
        payload={"workflow_id": workflow.pk, "inputs": {}},
    )


def test_call_workflow__two_signatures_during_overlap_each_verifies(receiver, workflow):
    """During the overlap the webhook-signature header carries two v1 signatures; either secret verifies."""
    url, received = receiver
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    call_workflow(_call(url, workflow))
    ((headers, body),) = received
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(part.startswith("v1,") for part in signatures)
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers) == {"workflow_id": workflow.pk, "inputs": {}}
    text = json.dumps(headers) + body.decode()
    assert new not in text and old not in text


def test_call_workflow__one_signature_after_overlap(receiver, workflow):
    """After the overlap only the new secret signs: the old one no longer verifies the call."""
    url, received = receiver
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    expire_overlap(workflow)
    call_workflow(_call(url, workflow))
    ((headers, body),) = received
    assert len(headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


def test_sign__previous_secret_adds_a_signature_first_is_current():
    """sign() puts the current secret's signature first, then the previous one's; a repeat is not doubled."""
    current, previous = generate_secret(), generate_secret()
    body = encode_body({"a": 1})
    at = datetime.now(UTC)
    headers = sign(secret=current, previous_secret=previous, message_id="m-1", body=body, at=at)
    first, second = headers["webhook-signature"].split(" ")
    assert first == Webhook(current).sign(msg_id="m-1", timestamp=at.replace(microsecond=0), data=body)
    assert second == Webhook(previous).sign(msg_id="m-1", timestamp=at.replace(microsecond=0), data=body)
    single = sign(secret=current, previous_secret=current, message_id="m-1", body=body, at=at)
    assert single["webhook-signature"] == first
    assert sign(secret=current, message_id="m-1", body=body, at=at)["webhook-signature"] == first


def test_execution_perform__passes_previous_secret_only_during_overlap(monkeypatch, trigger):
    """The worker builds its call with the previous secret during the overlap, and without it after."""
    from schedules import dispatch
    from schedules import services as schedule_services

    calls: list[WorkflowCall] = []

    def fake_call(call: WorkflowCall):
        calls.append(call)
        raise dispatch.WorkflowCallError("stop here")

    monkeypatch.setattr(dispatch, "call_workflow", fake_call)
    monkeypatch.setattr(dispatch, "_enqueue_attempt", lambda *args, **kwargs: None)
    workflow = trigger.workflow
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    for expired in (False, True):
        if expired:
            expire_overlap(workflow)
        execution = schedule_services.trigger_run_now(trigger=trigger)
        execution = dispatch.execution_claim(execution_id=execution.pk, attempt=1)
        dispatch.execution_perform(execution=execution)
    during, after = calls
    assert (during.secret, during.previous_secret) == (new, old)
    assert (after.secret, after.previous_secret) == (new, None)


# --- never shown, never logged -------------------------------------------------------------------


def test_secrets__not_in_repr_or_str(workflow):
    """repr/str of a workflow and of a call never contain its secrets."""
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    texts = [str(workflow), repr(workflow), repr(_call("http://127.0.0.1:9/run", workflow))]
    for text in texts:
        assert old not in text and new not in text
        assert old.removeprefix("whsec_") not in text and new.removeprefix("whsec_") not in text


def test_secrets__refused_run_logs_no_secret(client, workflow, caplog):
    """A refused run request is logged without any secret (current or previous)."""
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow)
    with caplog.at_level(logging.DEBUG):
        assert post_run(client, workflow, generate_secret()).status_code == 401
    assert caplog.records
    assert old not in caplog.text and new not in caplog.text


# --- the command -------------------------------------------------------------------------------


def test_workflow_command__rotate_secret_prints_new_secret_once(workflow):
    """rotate-secret prints the new secret exactly once (never the old one) and when the old one stops."""
    old = workflow.secret
    out = run_command("workflow", "rotate-secret", str(workflow.pk), "--overlap", "3600")
    workflow.refresh_from_db()
    assert out.count(workflow.secret) == 1
    assert old not in out
    assert workflow.previous_secret == old
    assert "will not be shown again" in out
    assert workflow.previous_secret_expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") in out
    listing = run_command("workflow", "list")
    assert workflow.secret not in listing and old not in listing


def test_workflow_command__rotate_secret_by_name_with_zero_overlap(workflow):
    """The workflow can be named; --overlap 0 says the old secret no longer verifies."""
    out = run_command("workflow", "rotate-secret", workflow.name, "--overlap", "0")
    workflow.refresh_from_db()
    assert workflow.valid_secrets() == [workflow.secret]
    assert "The old secret no longer verifies." in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["999999"], r"WORKFLOW: no workflow has the id or name '999999'"),
        (["{pk}", "--overlap", "-5"], r"--overlap"),
        (["{pk}", "--overlap", "604801"], r"--overlap"),
        (["{pk}", "--overlap", "soon"], r"--overlap"),
    ],
)
def test_workflow_command__rotate_secret_bad_input(workflow, args, message):
    """An unknown workflow or a bad --overlap is a CommandError naming it; nothing changes."""
    old = workflow.secret
    with pytest.raises(CommandError, match=message):
        run_command("workflow", "rotate-secret", *[arg.format(pk=workflow.pk) for arg in args])
    assert Workflow.objects.get(pk=workflow.pk).secret == old


# --- the admin ---------------------------------------------------------------------------------

CHANGELIST = "admin:workflows_workflow_changelist"


def _rotate_in_admin(admin_client, *workflows: Workflow):
    return admin_client.post(
        reverse(CHANGELIST), {"action": "rotate_secrets", "_selected_action": [str(w.pk) for w in workflows]}
    )


def test_workflow_admin__rotate_action_shows_new_secrets_once(admin_client, user):
    """The action rotates each selected workflow and its page shows each new secret once, never the old ones."""
    one, two = WorkflowFactory(owner=user), WorkflowFactory(owner=user)
    olds = {one.pk: one.secret, two.pk: two.secret}
    response = _rotate_in_admin(admin_client, one, two)
    assert response.status_code == 200
    content = response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert "shown only now" in content
    for workflow in (one, two):
        workflow.refresh_from_db()
        assert content.count(workflow.secret) == 1
        assert olds[workflow.pk] not in content
        assert workflow.previous_secret == olds[workflow.pk]
    # Not kept anywhere for a later page: no message cookie, no session data carries it.
    stored = str(response.cookies) + "".join(s.session_data for s in Session.objects.all())
    assert one.secret not in stored and two.secret not in stored


def test_workflow_admin__after_rotation_no_page_shows_a_secret(admin_client, workflow):
    """After the action, list, change and history pages show neither secret; the change page shows the overlap."""
    old = workflow.secret
    _rotate_in_admin(admin_client, workflow)
    workflow.refresh_from_db()
    urls = [
        reverse(CHANGELIST),
        reverse("admin:workflows_workflow_change", args=[workflow.pk]),
        reverse("admin:workflows_workflow_history", args=[workflow.pk]),
    ]
    for url in urls:
        content = admin_client.get(url).content.decode()
        for secret in (workflow.secret, old):
            assert secret not in content, url
            assert secret.removeprefix("whsec_") not in content, url
    change = admin_client.get(urls[1]).content.decode()
    assert "Still verifies until" in change
    assert LogEntry.objects.get(object_id=str(workflow.pk)).get_change_message() == "Rotated the signing secret."


def test_workflow_admin__change_form_help_names_the_one_exception(admin_client, workflow):
    """The secret's help text says where a rotated secret is shown (the action, once)."""
    content = admin_client.get(reverse("admin:workflows_workflow_change", args=[workflow.pk])).content.decode()
    assert "Rotate signing secret" in content
    assert "shows the new secret once" in content
