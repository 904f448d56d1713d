"""Settings for the test suite: the base settings with faster hashing and short timings.

The timings are environment variables with the same names as in production, so the worker
and beat processes the end-to-end tests start read the same values.
"""

import os

for _name, _value in {
    "SCHEDULER_MIN_INTERVAL_SECONDS": "1",
    "SCHEDULER_LEASE_GRACE_SECONDS": "3",
    "SCHEDULER_RECOVERY_INTERVAL_SECONDS": "2",
    "SCHEDULER_MISSED_SLOT_GRACE_SECONDS": "30",
    "CELERY_BEAT_MAX_LOOP_INTERVAL": "1",
    # Test endpoints listen on loopback, which the SSRF guard refuses by default.
    "SCHEDULER_OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
}.items():
    os.environ.setdefault(_name, _value)

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
WHITENOISE_AUTOREFRESH = True  # no collectstatic before tests: find static files in the apps
WHITENOISE_USE_FINDERS = True
