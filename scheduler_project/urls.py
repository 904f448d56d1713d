"""URL routes: the admin and the API."""

from django.contrib import admin
from django.urls import path

from schedules.views import health
from workflows.views import workflow_runs

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/workflows/<int:workflow_id>/runs/", workflow_runs, name="workflow-runs"),
    path("api/health/", health, name="health"),
]
