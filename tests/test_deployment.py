"""Deployment: every setting in .env.example, the README and docker compose; check --deploy clean
with DEBUG off; HTTPS settings; the image's runtime-only requirements; bin/_venv.sh's reinstall."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from scheduler_project.env import env_bool, env_choice, env_int, env_proxy_ssl_header
from tests.e2e.harness import BEAT_COMMAND, FLOWER_COMMAND, GUNICORN_COMMAND, WORKER_COMMAND

ROOT = Path(__file__).resolve().parents[1]
COMPUTED = object()  # a default that follows another setting (DEBUG, SCHEDULER_DATA_DIR, ...)


def settings_variables() -> dict[str, object]:
    """Every variable scheduler_project/settings.py reads through env.py, with its default as
    written there: a literal, or COMPUTED."""
    found: dict[str, object] = {}
    for node in ast.walk(ast.parse((ROOT / "scheduler_project" / "settings.py").read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_")):
            continue
        name = node.args[0]
        assert isinstance(name, ast.Constant), f"line {node.lineno}: name the variable literally"
        try:
            found[name.value] = ast.literal_eval(node.args[1]) if len(node.args) > 1 else COMPUTED
        except ValueError:
            found[name.value] = COMPUTED
    return found


def as_env(default: object) -> str:
    """A default as it is written in an env file."""
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, list):
        return ",".join(default)
    return str(default)


def example_lines() -> dict[str, tuple[bool, str]]:
    """.env.example's variables: {name: (set, value)}; `#NAME=value` shows the default but leaves it unset."""
    lines = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert match[2] not in lines, f".env.example lists {match[2]} twice"
            lines[match[2]] = (not match[1], match[3])
    return lines


def test_settings_registry__finds_the_variables():
    """The parse sees the settings' variables (a guard against it silently finding none)."""
    found = settings_variables()
    assert len(found) > 50
    assert found["SCHEDULER_RECOVERY_INTERVAL_SECONDS"] == 10 and found["DEBUG"] is True
    assert found["SECRET_KEY"] is COMPUTED and found["SCHEDULER_HTTPS"] is COMPUTED


def test_env_example__lists_every_variable_with_its_default():
    """Each variable the settings read is in .env.example with the settings' default; one whose
    default follows another setting is commented out, so copying the file changes nothing."""
    lines = example_lines()
    problems = []
    for name, default in settings_variables().items():
        if name not in lines:
            problems.append(f"{name}: missing")
        elif default is COMPUTED:
            if lines[name][0]:
                problems.append(f"{name}: its default follows another setting; show it as #{name}=")
        elif lines[name][1] != as_env(default):
            problems.append(f"{name}: .env.example says {lines[name][1]!r}, the settings say {as_env(default)!r}")
    assert not problems, problems
    assert not set(lines) - set(settings_variables()) - {"SCHEDULER_REQUIRE_SERVICES"}


def test_readme_configuration__lists_every_variable():
    """The README's Configuration table names every variable the settings read."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    assert sorted(set(settings_variables()) - named) == []


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merge keys (<<: *app) resolved


def test_compose__every_app_service_gets_the_env_file():
    """Every service built from the image gets .env whole (env_file), so any variable set there
    reaches it; its own wiring overrides only what the stack decides."""
    services = compose()["services"]
    built = {name: service for name, service in services.items() if "build" in service}
    assert set(built) == {"migrate", "web", "worker", "beat", "flower"}
    for name, service in built.items():
        assert service["env_file"] in (".env", [".env"]), name
        wiring = set(service["environment"])
        assert wiring == {
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "CACHE_URL",
            "DEBUG",
            "SECRET_KEY",
            "SCHEDULER_SECRET_KEYS",
            "ALLOWED_HOSTS",
            "SCHEDULER_PUBLIC_BASE_URL",
        }, name
        assert service["environment"]["ALLOWED_HOSTS"].endswith(",web,127.0.0.1")


def _bare(command: list[str]) -> list[str]:
    return [Path(command[0]).name, *command[1:]]


def test_compose__commands_are_the_ones_the_tests_run():
    """web, worker, beat and flower run the command lines the end-to-end tests start (tests/e2e/harness.py)."""
    services = compose()["services"]
    assert services["worker"]["command"] == _bare(WORKER_COMMAND)
    assert services["beat"]["command"] == _bare(BEAT_COMMAND)
    web = services["web"]["command"]
    assert web[:1] + web[1:2] + web[4:] == _bare(GUNICORN_COMMAND) and web[2:4] == ["--bind", "0.0.0.0:8000"]
    flower = services["flower"]["command"]
    assert flower[:-2] == _bare(FLOWER_COMMAND) and flower[-2:] == ["--address=0.0.0.0", "--port=5555"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]  # this host only: it can stop workers


def test_compose__demo_runs_only_with_its_flag():
    """Nothing in compose runs demo by itself; the documented one-off passes --insecure-demo."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert all("demo" not in " ".join(service.get("command") or []) for service in compose()["services"].values())
    assert "manage.py demo --insecure-demo" in text


def production_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SECURE_", "SCHEDULER_", "DJANGO_", "CSRF_", "SESSION_", "DEBUG"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="scheduler_project.settings",
        DEBUG="0",
        SECRET_KEY="deploy-check-" + "x" * 50,
        SCHEDULER_SECRET_KEYS=Fernet.generate_key().decode(),
        SCHEDULER_DATA_DIR=os.environ.get("SCHEDULER_DATA_DIR", str(ROOT / "var")),
    )
    env.update(extra)
    return env


def test_check_deploy__no_warnings_with_debug_off():
    """`manage.py check --deploy` with DEBUG=0 and the required secrets finds nothing to warn about."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_https_off__plain_http_deployment_starts_without_hardening():
    """SCHEDULER_HTTPS=0 turns the HTTPS defaults off (and check --deploy then says so)."""
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_PROXY_SSL_HEADER)"
    )
    on = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=production_env(), capture_output=True, text=True)
    assert on.stdout.split() == ["True", "60", "True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')"], on.stderr
    plain = production_env(SCHEDULER_HTTPS="0")
    off = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=plain, capture_output=True, text=True)
    assert off.stdout.split() == ["False", "0", "False", "False", "None"], off.stderr


def test_https_settings__bad_values_name_the_variable():
    """A bad value stops start-up with the variable's name and what is allowed."""
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=production_env(SECURE_HSTS_SECONDS="a year"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS='a year': must be a whole number." in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("X-Forwarded-Proto: https", ("HTTP_X_FORWARDED_PROTO", "https")),
        ("X-Forwarded-Ssl:on", ("HTTP_X_FORWARDED_SSL", "on")),
        ("", None),
    ],
)
def test_env_proxy_ssl_header__parses_name_and_value(monkeypatch, value, expected):
    """'Name: value' becomes Django's (META key, value); empty trusts no header."""
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", value)
    assert env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https") == expected


@pytest.mark.parametrize("value", ["https", "X Forwarded: https", "X-Forwarded-Proto:"])
def test_env_proxy_ssl_header__bad_value_names_the_variable(monkeypatch, value):
    """Without 'Name: value' the error names the variable and shows the form."""
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", value)
    with pytest.raises(ImproperlyConfigured, match=r"^SECURE_PROXY_SSL_HEADER=.*e\.g\. 'X-Forwarded-Proto: https'"):
        env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER", "")


def test_env_helpers__bad_https_flags_and_log_format_name_the_variable(monkeypatch):
    """Flags, the HSTS age and the log format reject what they cannot read, naming the variable."""
    monkeypatch.setenv("SECURE_SSL_REDIRECT", "maybe")
    with pytest.raises(ImproperlyConfigured, match=r"^SECURE_SSL_REDIRECT='maybe': use one of 1/0"):
        env_bool("SECURE_SSL_REDIRECT", True)
    monkeypatch.setenv("SECURE_HSTS_SECONDS", "-1")
    with pytest.raises(ImproperlyConfigured, match=r"^SECURE_HSTS_SECONDS=-1: must be at least 0"):
        env_int("SECURE_HSTS_SECONDS", 60, minimum=0)
    monkeypatch.setenv("SCHEDULER_LOG_FORMAT", "xml")
    with pytest.raises(ImproperlyConfigured, match=r"^SCHEDULER_LOG_FORMAT='xml': use one of plain, json"):
        env_choice("SCHEDULER_LOG_FORMAT", "plain", ("plain", "json"))


@pytest.mark.django_db
def test_ssl_redirect__spares_the_internal_plain_http_paths(client, settings):
    """With SECURE_SSL_REDIRECT on, the admin redirects to HTTPS; the run endpoint (workers call it
    over the internal network), health and metrics answer over plain HTTP; behind the proxy nothing redirects."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    login = client.get("/admin/login/")
    assert login.status_code == 301 and login["Location"].startswith("https://")
    assert client.get("/admin/login/", headers={"X-Forwarded-Proto": "https"}).status_code == 200
    assert client.post("/api/workflows/1/runs/", data={}, content_type="application/json").status_code != 301
    assert client.get("/api/health/").status_code != 301
    assert client.get("/metrics").status_code != 301


# --- The image and the dev venv ---------------------------------------------------------------

TEST_TOOLS = ("pytest", "pytest-django", "pytest-timeout", "factory-boy", "schemathesis", "libfaketime", "ruff")


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-r")):
            names.add(re.split(r"[\[=<>]", line, maxsplit=1)[0].lower())
    return names


def test_requirements__image_installs_only_the_runtime():
    """The Dockerfile installs requirements/runtime.txt, which has no test or lint tool; the dev
    file includes it and adds them; the build context leaves the tests and benchmarks out."""
    runtime = requirement_names(ROOT / "requirements" / "runtime.txt")
    assert {"django", "celery", "gunicorn", "prometheus-client", "flower"} <= runtime
    assert not runtime & set(TEST_TOOLS)
    dev = (ROOT / "requirements.txt").read_text()
    assert "-r requirements/runtime.txt" in dev.splitlines()
    assert set(TEST_TOOLS) <= requirement_names(ROOT / "requirements.txt")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements/runtime.txt" in dockerfile
    assert "-r requirements.txt" not in dockerfile and "COPY requirements.txt" not in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"tests", "bench"} <= set(ignored)
    # What compose runs is in the image: manage.py and the project's packages are not ignored.
    assert not {"manage.py", "scheduler_project", "schedules", "workflows", "requirements"} & set(ignored)


@pytest.mark.parametrize("changed", ["requirements.txt", "requirements/runtime.txt", None])
def test_venv_script__reinstalls_when_an_included_requirements_file_changes(tmp_path, changed):
    """bin/_venv.sh reinstalls when requirements.txt or a file it includes is newer than its stamp,
    and not otherwise."""
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements.txt").write_text("-r requirements/runtime.txt\n")
    (tmp_path / "requirements" / "runtime.txt").write_text("django\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../../pip-calls"\n')
    python.chmod(0o755)
    stamp = tmp_path / ".venv" / ".requirements-installed"
    stamp.touch()
    old = stamp.stat().st_mtime - 60
    for path in (tmp_path / "requirements.txt", tmp_path / "requirements" / "runtime.txt"):
        os.utime(path, (old, old))
    if changed:
        os.utime(tmp_path / changed, (old + 120, old + 120))
    script = f"source {ROOT / 'bin' / '_venv.sh'}; ensure_venv test"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    calls = (tmp_path / "pip-calls").read_text() if (tmp_path / "pip-calls").exists() else ""
    if changed:
        assert "pip install" in calls and "-r requirements.txt" in calls
    else:
        assert calls == ""


def test_database_pool_size__configures_djangos_pool_for_postgresql_and_is_refused_elsewhere():
    """DATABASE_POOL_SIZE turns on Django's PostgreSQL pool (psycopg_pool) of at most that many
    connections, with no per-thread persistent connection beside it; with SQLite, or an unreadable
    value, start-up stops naming the variable."""
    script = (
        "import django; django.setup(); from django.conf import settings; d = settings.DATABASES['default'];"
        "print(d['CONN_MAX_AGE'], d['OPTIONS'].get('pool'))"
    )
    url = "postgres://scheduler@db.invalid:5432/scheduler"

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        env = production_env(DATABASE_URL=url, **extra)
        return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)

    pooled = run(DATABASE_POOL_SIZE="16")
    assert pooled.stdout.strip() == "0 {'min_size': 1, 'max_size': 16, 'timeout': 30}", pooled.stderr
    plain = run()
    assert plain.stdout.strip() == "60 None", plain.stderr
    bad = run(DATABASE_POOL_SIZE="many")
    assert bad.returncode != 0 and "DATABASE_POOL_SIZE='many': must be a whole number." in bad.stderr
    sqlite = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=production_env(DATABASE_URL="sqlite:///var/pool.sqlite3", DATABASE_POOL_SIZE="4"),
        capture_output=True,
        text=True,
    )
    assert sqlite.returncode != 0
    assert "DATABASE_POOL_SIZE=4: a connection pool is for PostgreSQL only" in sqlite.stderr


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="the pool is PostgreSQL's (DATABASE_URL)"
)
@pytest.mark.django_db
def test_database_pool_size__threads_that_close_their_connection_reuse_one_server_connection():
    """As gevent's greenlets do (a connection per task, closed after it, scheduler_project/celery.py):
    twenty threads one after the other each query and close. Pooled (at most 4), they are served
    by at most four PostgreSQL backends (the pool may open a second connection while its first is
    still being made); without the pool, each opened its own."""
    from django.db import connection

    name = connection.settings_dict["NAME"]  # the test database
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    script = (
        "import threading, django; django.setup()\n"
        "from django.db import connection, connections\n"
        "pids = []\n"
        "def task():\n"
        "    with connection.cursor() as cursor:\n"
        "        cursor.execute('SELECT pg_backend_pid()')\n"
        "        pids.append(cursor.fetchone()[0])\n"
        "    connections.close_all()\n"
        "for _ in range(20):\n"
        "    thread = threading.Thread(target=task); thread.start(); thread.join()\n"
        "print(len(pids), len(set(pids)))\n"
    )

    def distinct_backends(**extra: str) -> str:
        env = production_env(DATABASE_URL=f"{base}/{name}", **extra)
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    queries, backends = map(int, distinct_backends(DATABASE_POOL_SIZE="4").split())
    assert queries == 20 and 1 <= backends <= 4
    assert distinct_backends() == "20 20"
