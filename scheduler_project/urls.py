"""URL routes: the landing page (/), the web UI (/app/), the admin, /metrics, the API (/api/), its schema and docs."""

from django.contrib import admin
from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from scheduler_project.api import IdConverter, api_not_found
from scheduler_project.views import ApiRootView, home, metrics
from schedules.api import (
    ExecutionViewSet,
    HealthView,
    TriggerAuditView,
    TriggerExecutionsView,
    TriggerViewSet,
    WorkflowStartView,
    WorkflowStatsView,
)
from workflows.api import (
    AuditEventListView,
    WorkflowAuditView,
    WorkflowRunsView,
    WorkflowRunViewSet,
    WorkflowViewSet,
)
from workflows.views import demo_target

admin.site.site_header = "Workflow Scheduler"
admin.site.site_title = "Workflow Scheduler admin"
admin.site.index_title = "Workflows, triggers and their executions"
# The lists are wide (schedule, next and last run, filters): the app sidebar would take a fifth of a
# 1,400 px screen on every page; the admin's home page lists the apps.
admin.site.enable_nav_sidebar = False

register_converter(IdConverter, "id")
# Path converters (lookup_value_converter on the viewsets), so an id that is not one never reaches a query.
router = SimpleRouter(use_regex_path=False)
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("triggers", TriggerViewSet, basename="trigger")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("runs", WorkflowRunViewSet, basename="run")

urlpatterns = [
    path("", home, name="home"),
    path("admin/", admin.site.urls),
    # The self-service web UI: every user's own schedules (schedules/urls.py).
    path("app/", include("schedules.urls")),
    # Prometheus: the scheduler's state (token-protected; see README "Observability").
    path("metrics", metrics, name="metrics"),
    # POST: the signed execution endpoint (Workflow.execution_url); GET: the workflow's runs for its owner.
    path("api/workflows/<id:workflow_id>/runs/", WorkflowRunsView.as_view(), name="workflow-runs"),
    path("api/workflows/<id:pk>/stats/", WorkflowStatsView.as_view(), name="workflow-stats"),
    # Start now, later or on a schedule (schedules' view: a schedule is a trigger).
    path("api/workflows/<id:pk>/start/", WorkflowStartView.as_view(), name="workflow-start"),
    path("api/triggers/<id:pk>/executions/", TriggerExecutionsView.as_view(), name="trigger-executions"),
    # The audit trail: of all your objects, or of one workflow or trigger.
    path("api/audit/", AuditEventListView.as_view(), name="audit-list"),
    path("api/workflows/<id:pk>/audit/", WorkflowAuditView.as_view(), name="workflow-audit"),
    path("api/triggers/<id:pk>/audit/", TriggerAuditView.as_view(), name="trigger-audit"),
    path("api/health/", HealthView.as_view(), name="health"),
    # manage.py demo's examples call it (workflows/demo.py); it answers 404 while SCHEDULER_DEMO_TARGET is off.
    path("api/demo-target/<slug:call>", demo_target, name="demo-target"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", ApiRootView.as_view(), name="api-root"),
    path("api/", include(router.urls)),
    re_path(r"^api/", api_not_found),  # last: every other /api/ URL is a JSON 404, DEBUG or not
]

handler400 = "scheduler_project.api.bad_request"
handler404 = "scheduler_project.api.not_found"
handler500 = "scheduler_project.api.server_error"
