"""Settings for running RedBeat against this project in the benchmarks (bench/beat_scale.py).

The project's settings plus RedBeat's own Redis URL: RedBeat reads ``redbeat_redis_url`` from
the Celery config (here ``CELERY_REDBEAT_REDIS_URL``, the CELERY_ namespace), and would fall back
to the broker's database without it. The benchmark gives it a Redis database of its own.
"""

import os

from scheduler_project.settings import *  # noqa: F403

CELERY_REDBEAT_REDIS_URL = os.environ.get("BENCH_REDBEAT_URL", "redis://127.0.0.1:6379/14")
# Explicit (empty) client options: without them RedBeat inherits the broker's transport options.
CELERY_REDBEAT_REDIS_OPTIONS: dict = {}
