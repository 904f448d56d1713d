# The one image for web (gunicorn), worker, beat and the migrate job; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Nothing here needs root, and celery warns against running as root.
# A writable home: gunicorn puts its control socket in ~/.gunicorn/.
RUN groupadd --system app \
    && useradd --system --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# Requirements first, so a code change doesn't reinstall every package. Only the runtime ones:
# requirements.txt adds the test and lint tools, which the image has no use for.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir -r requirements/runtime.txt

# The code stays owned by root: the app user can read it, not change it.
COPY . .

# Settings refuse to start with DEBUG off and no SECRET_KEY; collecting static files needs neither,
# so it runs with the local defaults and writes its scratch data outside the image's data dir.
# whitenoise serves the result from STATIC_ROOT (/app/staticfiles) under gunicorn.
RUN DEBUG=1 SCHEDULER_DATA_DIR=/tmp/build-data python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data \
    && mkdir -p /app/var \
    && chown app:app /app/var

# SCHEDULER_DATA_DIR: the only place the app writes (beat's heartbeat file).
ENV SCHEDULER_DATA_DIR=/app/var
USER app
EXPOSE 8000

CMD ["gunicorn", "scheduler_project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--timeout", "60"]
