"""App config for schedules: triggers (when) and executions (history)."""

from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "schedules"

    def ready(self) -> None:
        import scheduler_project.lookups  # noqa: F401  (registers field__any)
        from scheduler_project import pg_timestamps
        from workflows.engine import runner

        from . import (
            checks,  # noqa: F401  (registers the start-up checks)
            dispatch,
            services,
        )

        pg_timestamps.install()
        # An execution of a built-in engine workflow ends when its run does (the recovery task
        # looks too, in case this is lost).
        runner.listen_run_finished(lambda run_id: dispatch.executions_follow_runs(run_ids=[run_id]))
        # A failed run retried: the Execution that failed with it follows it again (same transaction).
        runner.listen_run_reopened(lambda run_id: services.execution_reopen_for_run(run_id=run_id))
