"""Django settings: everything comes from the environment, with local defaults.

With nothing set, the project runs on SQLite and kombu's filesystem transport, so it needs
nothing but Python. Set DATABASE_URL and CELERY_BROKER_URL for PostgreSQL and Redis.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from .env import (
    env_bool,
    env_choice,
    env_fernet_keys,
    env_float,
    env_int,
    env_list,
    env_proxy_ssl_header,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Where the embedded defaults keep their files (SQLite database, filesystem broker, beat heartbeat).
DATA_DIR = Path(env_str("SCHEDULER_DATA_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", "django-insecure-local-development-only" if DEBUG else None)
if not DEBUG and SECRET_KEY.startswith("django-insecure"):
    raise ImproperlyConfigured("SECRET_KEY: set a real secret when DEBUG is off.")
# Fernet keys that encrypt workflow signing secrets in the database (workflows.fields): comma-separated,
# the first encrypts and every one decrypts, so a new key goes first and the old one stays until
# `manage.py workflow reencrypt-secrets` has run. Required when DEBUG is off; locally a key is
# derived from SECRET_KEY. https://cryptography.io/en/latest/fernet/#cryptography.fernet.MultiFernet
SCHEDULER_SECRET_KEYS = env_fernet_keys("SCHEDULER_SECRET_KEYS", fallback_secret=SECRET_KEY if DEBUG else None)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- HTTPS ----------------------------------------------------------------------------------
# With DEBUG off the service is taken to be served over HTTPS by a TLS-terminating proxy that sets
# X-Forwarded-Proto (the production posture `manage.py check --deploy` asks for); SCHEDULER_HTTPS=0
# turns every default below off for a plain-HTTP deployment (a private network, a local try-out),
# and each setting can be set on its own. https://docs.djangoproject.com/en/5.2/ref/middleware/#http-strict-transport-security
SCHEDULER_HTTPS = env_bool("SCHEDULER_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SCHEDULER_HTTPS)
# Plain HTTP stays allowed where other services call this one inside its network: the signed run
# endpoint (workers call SCHEDULER_PUBLIC_BASE_URL, e.g. http://web:8000), health and metrics.
# The demo target too, when it is on (workers call it there, see SCHEDULER_DEMO_TARGET).
SECURE_REDIRECT_EXEMPT = [r"^api/workflows/\d+/runs/$", r"^api/health/$", r"^metrics$", r"^api/demo-target/[-\w]+$"]
# HSTS starts short, as cookiecutter-django's production settings do: raise it (e.g. 31536000) once
# HTTPS is known to work, since browsers then refuse plain HTTP for that long.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 60 if SCHEDULER_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SCHEDULER_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", SCHEDULER_HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SCHEDULER_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SCHEDULER_HTTPS)
# The header the proxy sets on HTTPS requests, as "Name: value"; empty = trust none. Set it only
# when every request passes through a proxy that overwrites it (clients could forge it otherwise).
# https://docs.djangoproject.com/en/5.2/ref/settings/#secure-proxy-ssl-header
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header(
    "SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https" if SCHEDULER_HTTPS else ""
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular_sidecar",
    "drf_spectacular",
    "workflows",
    "schedules",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files under gunicorn without a separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "workflows.middleware.AuditSourceMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scheduler_project.urls"
WSGI_APPLICATION = "scheduler_project.wsgi.application"
ASGI_APPLICATION = "scheduler_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "scheduler_project" / "templates"],  # the landing page
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # Web, worker and beat share one file: WAL lets readers run beside the one writer, and
        # IMMEDIATE transactions take the write lock at BEGIN, so two processes claiming the same
        # slot queue up instead of failing with "database is locked" on upgrade.
        # https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-transaction-behavior
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # The test database must be a file that worker and beat subprocesses can open too.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
# A pool of PostgreSQL connections in each process (Django's "pool" option: psycopg_pool), for
# processes whose units of work don't keep a connection of their own. Under `celery worker -P
# gevent` each task runs in a new greenlet and Django's connections belong to it, so without a
# pool every task opened a PostgreSQL connection and closed it (scheduler_project/celery.py).
# Connections go back to the pool instead of being kept per thread (CONN_MAX_AGE is then 0); at
# most this many per process. 0 (the default): no pool.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 0, minimum=0, maximum=1000)
if DATABASE_POOL_SIZE:
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            f"DATABASE_POOL_SIZE={DATABASE_POOL_SIZE}: a connection pool is for PostgreSQL only; "
            "leave it unset (or 0) with this DATABASE_URL."
        )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        # How long a unit of work waits for a free connection before it fails (psycopg_pool's default).
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# Times shown as 2026-12-07 09:00:00 UTC everywhere (scheduler_project/formats/en/formats.py).
FORMAT_MODULE_PATH = "scheduler_project.formats"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The web UI's sign-in page (/app/login/); the admin keeps its own.
LOGIN_URL = "ui:login"
LOGIN_REDIRECT_URL = "ui:trigger-list"
STATIC_ROOT = BASE_DIR / "staticfiles"

# plain: one readable line per record; json: one JSON object per line (time, level, logger, message,
# and trigger_id, execution_id, workflow_id, task_id when known) for a log pipeline. The worker and
# beat use it too (scheduler_project/celery.py puts it on Celery's handlers).
SCHEDULER_LOG_FORMAT = env_choice("SCHEDULER_LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "scheduler_project.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": SCHEDULER_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_choice("LOG_LEVEL", "INFO", _LOG_LEVELS).upper()},
}

# --- Metrics (README "Observability") --------------------------------------------------------
# /metrics on the web answers only this bearer token; unset, it is open with DEBUG on and closed with DEBUG off.
SCHEDULER_METRICS_TOKEN = env_str("SCHEDULER_METRICS_TOKEN", "")
# The worker's and beat's own metrics (call durations, retries, tick times) on a port each; 0 = off.
SCHEDULER_WORKER_METRICS_PORT = env_int("SCHEDULER_WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)
SCHEDULER_BEAT_METRICS_PORT = env_int("SCHEDULER_BEAT_METRICS_PORT", 0, minimum=0, maximum=65535)
# Where those two listen: loopback by default; 0.0.0.0 in a container that Prometheus scrapes from outside.
SCHEDULER_METRICS_BIND_ADDRESS = env_str("SCHEDULER_METRICS_BIND_ADDRESS", "127.0.0.1")

# --- API ------------------------------------------------------------------------------------
# The throttles count requests in this cache. A memory cache counts each process apart (with
# gunicorn's N workers a user gets N times the rate), so production points it at Redis, e.g.
# CACHE_URL=redis://redis:6379/1. https://docs.djangoproject.com/en/5.2/topics/cache/#redis
CACHE_URL = env_str("CACHE_URL", "locmem://")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL == "locmem://":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: use locmem:// or redis://host:port/db.")
# Per user: writes (create, update, delete, pause, ...) and runs (run now, backfill, retry).
SCHEDULER_API_WRITE_RATE = env_rate("SCHEDULER_API_WRITE_RATE", "60/min")
SCHEDULER_API_RUN_RATE = env_rate("SCHEDULER_API_RUN_RATE", "30/min")
SCHEDULER_API_PAGE_SIZE = env_int("SCHEDULER_API_PAGE_SIZE", 50, minimum=1, maximum=1000)
# https://www.django-rest-framework.org/api-guide/settings/
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes an unauthenticated request a 401 (not a 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # DRF's default is AllowAny; every view that is open (health, the signed run endpoint) says so itself.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: /api/docs/ is the interactive page.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's, refusing JSON nested too deep or with unpaired surrogates (a 400, not a 500).
    "DEFAULT_PARSER_CLASSES": ["scheduler_project.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "scheduler_project.api.Pagination",
    "PAGE_SIZE": SCHEDULER_API_PAGE_SIZE,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_THROTTLE_RATES": {"writes": SCHEDULER_API_WRITE_RATE, "runs": SCHEDULER_API_RUN_RATE},
    "EXCEPTION_HANDLER": "scheduler_project.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
# https://drf-spectacular.readthedocs.io/en/latest/settings.html
SPECTACULAR_SETTINGS = {
    "TITLE": "Workflow Scheduler API",
    "DESCRIPTION": "Workflows (what to call), triggers (when) and executions (what happened). "
    "Authenticate with `Authorization: Token <key>` (`manage.py token create USERNAME`). "
    'Every error answers {"errors": {"field": ["message"]}}.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from drf-spectacular-sidecar's static files: /api/docs/ needs no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Separate request and response components, so write-only and read-only fields are exact.
    "COMPONENT_SPLIT_REQUEST": True,
    "PATH_CONVERTER_OVERRIDES": {"id": int},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "scheduler_project.api.schema_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "schedules.models.ExecutionStatus",
        "TriggerStatusEnum": "schedules.models.TriggerStatus",
        "TriggerOverlapEnum": "schedules.models.OverlapPolicy",
        "BackfillOverlapEnum": "schedules.services.BACKFILL_OVERLAP",
        "CatchupEnum": "schedules.models.CatchupPolicy",
        "PriorityEnum": "schedules.models.Priority",
        "RunPriorityEnum": "workflows.models.RunPriority",
    },
}

# --- Celery ---------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
# How long Redis keeps a delivered, unacknowledged message before handing it out again.
# Countdown retries sit in the broker, so the longest backoff must stay below it (checked at
# start-up by schedules.checks). https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_VISIBILITY_TIMEOUT_SECONDS = env_int("CELERY_VISIBILITY_TIMEOUT_SECONDS", 3600, minimum=60)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The folder comes from the options below, not the URL; a bare "filesystem://" makes every
    # connection log "No hostname was supplied. Reverting to default 'localhost'".
    if CELERY_BROKER_URL == "filesystem://":
        CELERY_BROKER_URL = "filesystem://localhost/"
    # Our subclass of kombu's transport (scheduler_project/broker.py): message files appear whole.
    CELERY_BROKER_TRANSPORT = "scheduler_project.broker:FilesystemTransport"
    BROKER_DIR = DATA_DIR / "broker"
    for _folder in ("queue", "processed", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu polls the folder once a second by default, which caps a worker near 2 messages/s.
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_SECONDS,
        # Redis connections one worker process may open (kombu's default is 10). A threads or gevent
        # pool acks from many tasks at once: below its concurrency, acks fail (MaxConnectionsError)
        # and their messages are delivered again (measured at -P gevent -c 64). Keep it >= -c.
        "max_connections": env_int("CELERY_BROKER_MAX_CONNECTIONS", 100, minimum=10),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# django-celery-results' database backend, writing finished results in batches rather than one
# transaction each (scheduler_project/results.py); they show up within this many seconds.
CELERY_RESULT_BACKEND = "scheduler_project.results:BatchedDatabaseBackend"
SCHEDULER_RESULTS_FLUSH_SECONDS = env_int("SCHEDULER_RESULTS_FLUSH_SECONDS", 1, minimum=1, maximum=60)
CELERY_RESULT_EXTENDED = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# A message is acknowledged only after its task returns, and a worker child that dies mid-task
# sends its message back to the queue: a killed worker loses nothing.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Celery's Django fixup closes the database connection before and after every task unless this is
# set (celery/celery#9824: a query cut off by a time limit can leave it unusable); then it closes it
# every this many tasks, and scheduler_project/celery.py drops a broken or old one before each task
# as Django does per request (CONN_MAX_AGE, CONN_HEALTH_CHECKS). A new PostgreSQL connection per
# task would cost more than the task's own queries.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
# Reserve one message per process, so a busy worker doesn't sit on slots an idle one could run.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A workflow call is bounded by its own deadline (at most 300 s); these stop anything stuck past it.
CELERY_TASK_SOFT_TIME_LIMIT = 360
CELERY_TASK_TIME_LIMIT = 420
# Workers report each task (received, started, succeeded...) to monitors such as Flower.
CELERY_WORKER_SEND_TASK_EVENTS = True
# A "task-sent" event per published message as well: off by default, because it is a second
# message for every one beat publishes (its dispatch rate drops by about a third); monitors still
# see every task from the moment a worker receives it.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-send-sent-event
CELERY_TASK_SEND_SENT_EVENT = env_bool("CELERY_TASK_SEND_SENT_EVENT", False)
# Dispatches triggers from the due index in the database and runs the other periodic tasks as
# django-celery-beat's DatabaseScheduler (schedules/beat.py). Several beats may run at once.
CELERY_BEAT_SCHEDULER = "schedules.beat:TriggerScheduler"
# Longest sleep between two looks at the ordinary periodic tasks (recovery, retention, users' own).
CELERY_BEAT_MAX_LOOP_INTERVAL = env_int("CELERY_BEAT_MAX_LOOP_INTERVAL", 5, minimum=1, maximum=60)
# The lease holder writes an ordinary periodic task's last run back as soon as it sends it, so a
# beat that takes over does not send it again (the default is every 3 minutes).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-sync-every
CELERY_BEAT_SYNC_EVERY = 1
# Longest sleep between two looks at the due index: how soon an edit, a pause or a new trigger
# due right away is seen. Beat otherwise wakes exactly when the next trigger falls due.
SCHEDULER_BEAT_POLL_SECONDS = env_int("SCHEDULER_BEAT_POLL_SECONDS", 1, minimum=1, maximum=60)
# How long the beat that sends the ordinary periodic tasks holds that role without renewing it
# (it renews every second): a killed beat's role is taken over by another within this time.
SCHEDULER_BEAT_LEASE_SECONDS = env_int("SCHEDULER_BEAT_LEASE_SECONDS", 3, minimum=2, maximum=300)
# Lease of an execution beat committed and is publishing: if beat dies before the broker has the
# message, another beat sends it once this runs out.
SCHEDULER_HANDOFF_SECONDS = env_int("SCHEDULER_HANDOFF_SECONDS", 5, minimum=1, maximum=300)
# A burst's first attempts go to the workers several per message (schedules.run_executions), which a
# worker process runs one after another: Celery's own cost per message (receive, ack, events,
# result) and the claim's read are paid once per message instead of once per execution. A batch is
# split into at least SCHEDULER_MESSAGE_FANOUT messages (set it to at least your workers' total
# concurrency, so every slot gets work) of at most SCHEDULER_EXECUTIONS_PER_MESSAGE each; smaller
# batches go one per message. Every SCHEDULER_MESSAGE_SECONDS a worker looks at the message's queue:
# if it is empty (other workers may be idle) it sends the attempts not started back one per message,
# so slow endpoints are called in parallel again; if messages wait there, it goes on.
SCHEDULER_EXECUTIONS_PER_MESSAGE = env_int("SCHEDULER_EXECUTIONS_PER_MESSAGE", 20, minimum=1, maximum=100)
SCHEDULER_MESSAGE_FANOUT = env_int("SCHEDULER_MESSAGE_FANOUT", 64, minimum=1)
SCHEDULER_MESSAGE_SECONDS = env_float("SCHEDULER_MESSAGE_SECONDS", 1.0, minimum=0.0)

# --- Scheduler ------------------------------------------------------------------------------
# Base URL of this service, used to reach the built-in execution endpoint
# (/api/workflows/<id>/runs/) for workflows that have no endpoint_url of their own.
SCHEDULER_PUBLIC_BASE_URL = env_str("SCHEDULER_PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
# Connect timeout for workflow calls; the read timeout and total deadline are the workflow's own.
SCHEDULER_CONNECT_TIMEOUT_SECONDS = env_int("SCHEDULER_CONNECT_TIMEOUT_SECONDS", 5, minimum=1, maximum=60)
# The SSRF guard (workflows/network.py): the worker resolves each endpoint's host itself and refuses
# loopback, private, link-local (cloud metadata), multicast, reserved and other non-global
# addresses, IPv4 and IPv6, unless allowed here: CIDRs, e.g. 10.20.0.0/16,fd00:1::/64, and exact
# host names, e.g. n8n.internal. The host of SCHEDULER_PUBLIC_BASE_URL is always allowed for the
# built-in run endpoint. https://cheatsheetseries.owasp.org/cheatsheets/Server_Side_Request_Forgery_Prevention_Cheat_Sheet.html
SCHEDULER_OUTBOUND_ALLOW_NETWORKS = env_list("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", [])
for _network in SCHEDULER_OUTBOUND_ALLOW_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"SCHEDULER_OUTBOUND_ALLOW_NETWORKS: {_network!r} is not a network, e.g. 10.20.0.0/16 or fd00::/8."
        ) from None
SCHEDULER_OUTBOUND_ALLOW_HOSTS = env_list("SCHEDULER_OUTBOUND_ALLOW_HOSTS", [])
# The demo target (workflows/demo.py): POST /api/demo-target/<call> answers the examples' calls
# (examples/, set up by `manage.py demo`) with made-up JSON. On by default only with DEBUG. While it
# is on, the guard above lets workers call exactly that path on SCHEDULER_PUBLIC_BASE_URL's host,
# as it does the built-in run endpoint; loopback and private addresses in general stay refused.
SCHEDULER_DEMO_TARGET = env_bool("SCHEDULER_DEMO_TARGET", DEBUG)
# Off: a 3xx answer fails the call. On: up to 5 hops are followed, each host vetted again, and the
# signature, Idempotency-Key, Authorization and workflow headers never go to another host.
SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = env_bool("SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS", False)
# An attempt holds its execution for its deadline plus this grace; past it the holder is
# presumed dead and the recovery task runs the execution again (same Idempotency-Key).
SCHEDULER_LEASE_GRACE_SECONDS = env_int("SCHEDULER_LEASE_GRACE_SECONDS", 60, minimum=1)
# How often beat runs the recovery task (stuck executions, slots whose message was lost).
# It also sends long waits held in the database when they fall due, so keep it short.
SCHEDULER_RECOVERY_INTERVAL_SECONDS = env_int("SCHEDULER_RECOVERY_INTERVAL_SECONDS", 10, minimum=1)
# How often beat prunes execution history to the retention settings (SCHEDULER_KEEP_* below).
SCHEDULER_RETENTION_INTERVAL_SECONDS = env_int("SCHEDULER_RETENTION_INTERVAL_SECONDS", 3600, minimum=60)
# A due slot that no fire has claimed this long after its time is taken by the recovery task.
SCHEDULER_MISSED_SLOT_GRACE_SECONDS = env_int("SCHEDULER_MISSED_SLOT_GRACE_SECONDS", 90, minimum=1)
# Responses are read up to this size; history keeps only the first SCHEDULER_RESPONSE_EXCERPT_BYTES.
SCHEDULER_MAX_RESPONSE_BYTES = env_int("SCHEDULER_MAX_RESPONSE_BYTES", 1_048_576, minimum=1024)  # 1 MiB
SCHEDULER_RESPONSE_EXCERPT_BYTES = env_int("SCHEDULER_RESPONSE_EXCERPT_BYTES", 4096, minimum=0)
# Longest retry backoff a trigger may ask for; must stay below the broker's visibility timeout.
SCHEDULER_MAX_BACKOFF_CAP_SECONDS = env_int("SCHEDULER_MAX_BACKOFF_CAP_SECONDS", 1800, minimum=1)
# How often beat has finished executions counted into ExecutionStats (schedules.fold_stats); the
# stats readers add the ones not counted yet, so this only sets how many they add.
SCHEDULER_STATS_FOLD_INTERVAL_SECONDS = env_int("SCHEDULER_STATS_FOLD_INTERVAL_SECONDS", 5, minimum=1)
# beat touches this file on every tick; `manage.py healthcheck beat` reads its age.
SCHEDULER_BEAT_HEARTBEAT_FILE = env_str("SCHEDULER_BEAT_HEARTBEAT_FILE", str(DATA_DIR / "beat-heartbeat"))

CELERY_BEAT_SCHEDULE = {
    "scheduler.recover-executions": {
        "task": "schedules.recover_executions",
        "schedule": float(SCHEDULER_RECOVERY_INTERVAL_SECONDS),
        # On the high queue, so a backlog of normal work cannot hold recovery up.
        "options": {"expires": float(SCHEDULER_RECOVERY_INTERVAL_SECONDS), "queue": "high"},
    },
    # The built-in engine's runs: waits fallen due, steps whose worker died (workflows/engine/runner.py).
    "scheduler.recover-runs": {
        "task": "workflows.recover_runs",
        "schedule": float(SCHEDULER_RECOVERY_INTERVAL_SECONDS),
        "options": {"expires": float(SCHEDULER_RECOVERY_INTERVAL_SECONDS), "queue": "high"},
    },
    "scheduler.fold-stats": {
        "task": "schedules.fold_stats",
        "schedule": float(SCHEDULER_STATS_FOLD_INTERVAL_SECONDS),
        "options": {"expires": float(SCHEDULER_STATS_FOLD_INTERVAL_SECONDS), "queue": "high"},
    },
    "scheduler.prune-executions": {
        "task": "schedules.prune_executions",
        "schedule": float(SCHEDULER_RETENTION_INTERVAL_SECONDS),
        # Housekeeping waits behind real work; a run that expires in the queue is done by the next one.
        "options": {"expires": float(SCHEDULER_RETENTION_INTERVAL_SECONDS), "queue": "low"},
    },
}

DATA_DIR.mkdir(parents=True, exist_ok=True)
# Shortest interval an interval trigger may have (Cloud Scheduler's shortest is 60 s).
SCHEDULER_MIN_INTERVAL_SECONDS = env_int("SCHEDULER_MIN_INTERVAL_SECONDS", 10, minimum=1)
# Most executions one owner may have running at once across all workflows; 0 = no limit.
SCHEDULER_OWNER_MAX_CONCURRENCY = env_int("SCHEDULER_OWNER_MAX_CONCURRENCY", 0, minimum=0)
# A slot fired later than this after its time counts as missed (catch-up policy applies).
SCHEDULER_MISFIRE_GRACE_SECONDS = env_int("SCHEDULER_MISFIRE_GRACE_SECONDS", 60, minimum=1)
# Catch-up 'all' runs at most this many missed slots per trigger; older ones are recorded missed.
SCHEDULER_CATCHUP_MAX_SLOTS = env_int("SCHEDULER_CATCHUP_MAX_SLOTS", 100, minimum=1)
# Waits up to this long (retries, jitter) ride in the broker as countdowns; longer ones are held
# in the database and sent by the dispatch task when due (Redis re-delivers long ETAs).
SCHEDULER_COUNTDOWN_MAX_SECONDS = env_int("SCHEDULER_COUNTDOWN_MAX_SECONDS", 300, minimum=0)
# Retention defaults (per-trigger fields override): 0 = keep all.
SCHEDULER_KEEP_SUCCEEDED = env_int("SCHEDULER_KEEP_SUCCEEDED", 1000, minimum=0)
SCHEDULER_KEEP_FAILED = env_int("SCHEDULER_KEEP_FAILED", 1000, minimum=0)
SCHEDULER_RETENTION_DAYS = env_int("SCHEDULER_RETENTION_DAYS", 90, minimum=0)
# Most slots one backfill may create.
SCHEDULER_BACKFILL_MAX_SLOTS = env_int("SCHEDULER_BACKFILL_MAX_SLOTS", 1000, minimum=1)
SCHEDULER_NOTIFY_FROM_EMAIL = env_str("SCHEDULER_NOTIFY_FROM_EMAIL", "scheduler@localhost")
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)

# Priority queues: a trigger's executions go to its priority's queue. A plain `celery worker`
# consumes all three; `-Q high` etc. dedicates workers (see README).
CELERY_TASK_DEFAULT_QUEUE = "normal"
CELERY_TASK_QUEUES = [Queue("high"), Queue("normal"), Queue("low")]
