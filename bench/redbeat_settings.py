"""Settings for running RedBeat against this project in the benchmarks (bench/beat_scale.py).

The project's settings plus RedBeat's own Redis URL: RedBeat reads ``redbeat_redis_url`` from
the Celery config (here ``CELERY_REDBEAT_REDIS_URL``, the CELERY_ namespace), and would fall back
to the broker's database without it. The benchmark gives it a Redis database of its own.
"""

import os

from scheduler_project.settings import *  # noqa: F403

# RedBeat 2.4.2 still logs "will stop falling back to broker_url" at start: its check for an
# explicit setting doesn't see CELERY_-namespaced keys, but it reads this one (beat's banner shows
# "redis -> redis://127.0.0.1:6379/14").
CELERY_REDBEAT_REDIS_URL = os.environ.get("BENCH_REDBEAT_URL", "redis://127.0.0.1:6379/14")
