"""Errors of the workflows app. Messages never carry secrets."""

from __future__ import annotations


class WorkflowError(Exception):
    """Base class for workflow errors."""

    retryable = False


class WorkflowCallError(WorkflowError):
    """A call to a workflow's execution endpoint did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_seconds: float | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after_seconds = retry_after_seconds
        self.body_excerpt = body_excerpt


class WorkflowUnavailable(WorkflowCallError):
    """Worth retrying: connection errors, timeouts, 408, 425, 429 and 5xx."""

    retryable = True


class WorkflowTimedOut(WorkflowUnavailable):
    """Worth retrying: no complete answer within the call's deadline (the engine's ``timeout`` event)."""


class WorkflowRejected(WorkflowCallError):
    """Final: the endpoint refused the call (other 4xx, redirects, bad URL)."""


class TargetRefused(WorkflowRejected):
    """Final: we refused to call the endpoint, e.g. its host resolves to a private address (SSRF guard)."""


class SignatureInvalid(WorkflowError):
    """An incoming run request is unsigned, wrongly signed or stale."""


class SecretUndecryptable(WorkflowError):
    """A stored secret does not decrypt with any configured key (SCHEDULER_SECRET_KEYS)."""


class WorkflowInUse(WorkflowError):
    """The workflow still has triggers pointing at it."""

    field = "workflow"


class RunBodyInvalid(WorkflowError):
    """A signed run request whose body can't be recorded (e.g. JSON nested too deep)."""


class StepFailed(WorkflowError):
    """A step of the built-in engine failed (bad params at run time, a failed condition...)."""


class RunStateError(WorkflowError):
    """A run cannot do that in its state, e.g. resume a run that is not paused (the API's 409)."""

    field = "status"
