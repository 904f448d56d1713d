"""Routes of the self-service web UI, mounted at /app/ (namespace "ui")."""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "ui"

urlpatterns = [
    path("", views.index, name="index"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="schedules/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="ui:login"), name="logout"),
    path("settings/", views.preferences, name="preferences"),
    path("schedules/", views.trigger_list, name="trigger-list"),
    path("schedules/new/", views.trigger_create, name="trigger-create"),
    path("schedules/preview/", views.trigger_preview, name="trigger-preview"),
    path("schedules/<id:pk>/", views.trigger_detail, name="trigger-detail"),
    path("schedules/<id:pk>/history/", views.trigger_history, name="trigger-history"),
    path("schedules/<id:pk>/edit/", views.trigger_edit, name="trigger-edit"),
    path("schedules/<id:pk>/pause/", views.trigger_pause, name="trigger-pause"),
    path("schedules/<id:pk>/resume/", views.trigger_resume, name="trigger-resume"),
    path("schedules/<id:pk>/run/", views.trigger_run_now, name="trigger-run"),
    path("schedules/<id:pk>/backfill/", views.trigger_backfill, name="trigger-backfill"),
    path("schedules/<id:pk>/delete/", views.trigger_delete, name="trigger-delete"),
    path("executions/<uuid:pk>/retry/", views.execution_retry, name="execution-retry"),
    path("workflows/", views.workflow_list, name="workflow-list"),
    path("workflows/<id:pk>/", views.workflow_detail, name="workflow-detail"),
]
