"""What every API view shares: one error format, pagination, throttles and per-owner querysets."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import EmptyPage, Page, Paginator
from django.db import IntegrityError, models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.functional import cached_property
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeRangeField
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from kombu.exceptions import OperationalError
from rest_framework import exceptions, pagination, serializers, status, throttling
from rest_framework.filters import OrderingFilter
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

logger = logging.getLogger(__name__)

NON_FIELD = api_settings.NON_FIELD_ERRORS_KEY  # "non_field_errors"
# Errors that are not about the input (authentication, not found, throttled, ...) go under this key.
DETAIL = "detail"


# --- Errors -------------------------------------------------------------------------------------


def error_body(errors: Mapping[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    return {"errors": {key: [str(message) for message in messages] for key, messages in errors.items()}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF error detail (nested dicts and lists) as {"field": [...], "parent.child": [...]}."""
    if isinstance(detail, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = NON_FIELD if key == NON_FIELD_ERRORS else str(key)
            for field, messages in _flatten(value, f"{prefix}.{name}" if prefix else name).items():
                flat.setdefault(field, []).extend(messages)
        return flat
    if isinstance(detail, list | tuple):
        if all(not isinstance(item, Mapping | list | tuple) for item in detail):
            return {prefix or NON_FIELD: [str(item) for item in detail]}
        flat = {}
        for index, item in enumerate(detail):
            for field, messages in _flatten(item, f"{prefix}.{index}" if prefix else str(index)).items():
                flat.setdefault(field, []).extend(messages)
        return flat
    return {prefix or NON_FIELD: [str(detail)]}


def django_validation_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    """A model ValidationError keyed by field; a per-owner unique name is put on "name"."""
    if not hasattr(exc, "error_dict"):
        return {NON_FIELD: list(exc.messages)}
    errors: dict[str, list[str]] = {}
    for field, field_errors in exc.error_dict.items():
        for error in field_errors:
            key = NON_FIELD if field == NON_FIELD_ERRORS else field
            message = " ".join(error.messages)
            unique_check = (error.params or {}).get("unique_check") if error.code == "unique_together" else None
            if unique_check and "owner" in unique_check:
                # UniqueConstraint(owner, name): the owner is implied, the name is what to change.
                key = next(name for name in unique_check if name != "owner")
                message = f"you already have a {error.params['model_name']} with this {key}."
            errors.setdefault(key, []).append(message)
    return errors


def _integrity_errors(exc: IntegrityError) -> dict[str, list[str]]:
    """A constraint the checks before the save missed (e.g. two requests creating the same name at once)."""
    text = str(exc).lower()
    if "name" in text and "unique" in text:
        return {"name": ["you already have one with this name."]}
    return {NON_FIELD: ["conflicts with existing data; reload and try again."]}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error as {"errors": {"field": ["message"]}}, with the right status (never a 500 for bad input).

    400 bad input (DRF, django ValidationError, ScheduleError with its field), 404 missing or
    another user's, 409 state conflicts (pause a paused trigger, delete a workflow in use), 429
    throttled (with Retry-After), 503 broker unreachable or secrets undecryptable.
    """
    # Here, not at the top: workflows.api imports this module, and workflows never imports schedules.
    from schedules.exceptions import ScheduleError, TriggerNotFound, TriggerStateError
    from workflows.exceptions import RunStateError, SecretUndecryptable, WorkflowError, WorkflowInUse

    if isinstance(exc, RequestDataTooBig):
        return _answer({DETAIL: [too_big_message()]}, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, DjangoValidationError):
        return _answer(django_validation_errors(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, TriggerNotFound):
        return _answer({exc.field or DETAIL: [str(exc)]}, status.HTTP_404_NOT_FOUND)
    if isinstance(exc, TriggerStateError):
        return _answer({exc.field or NON_FIELD: [str(exc)]}, status.HTTP_409_CONFLICT)
    if isinstance(exc, ScheduleError):
        return _answer({exc.field or NON_FIELD: [str(exc)]}, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, WorkflowInUse):
        return _answer({"workflow": [str(exc)]}, status.HTTP_409_CONFLICT)
    if isinstance(exc, RunStateError):
        return _answer({"status": [str(exc)]}, status.HTTP_409_CONFLICT)
    if isinstance(exc, SecretUndecryptable):
        logger.error("API request failed: %s", exc)
        return _answer({"secret": [str(exc)]}, status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, WorkflowError):
        return _answer({NON_FIELD: [str(exc)]}, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, IntegrityError):
        return _answer(_integrity_errors(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, OverflowError):
        # Date arithmetic past year 9999 (or before year 1), or a number too big for the database.
        return _answer(
            {NON_FIELD: ["a time, duration or number is out of range; use dates in years 1-9999."]},
            status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, OperationalError):
        # Raised after the commit (the message is sent on_commit): what was recorded stays, and
        # the recovery task sends it once the broker is back.
        return _answer(
            {"broker": [f"saved, but the broker could not be reached ({type(exc).__name__}); it will be sent later."]},
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
    elif isinstance(exc, Http404):
        # The same words for a missing object and another user's, whatever the model.
        errors = {DETAIL: ["not found."]}
    else:
        errors = _flatten(response.data, DETAIL) if not isinstance(response.data, Mapping) else _flatten(response.data)
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    response.data = error_body(errors)
    return response


def _answer(errors: Mapping[str, list[str]], code: int) -> Response:
    set_rollback()
    return Response(error_body(errors), status=code)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body({DETAIL: ["not found."]}), status=404)
    return defaults.page_not_found(request, exception)


def too_big_message() -> str:
    return f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."


@csrf_exempt  # nothing here changes: a DELETE to an unknown URL is a 404, not a CSRF page
def api_not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any /api/ URL no route matches: JSON 404 even with DEBUG on (Django would show its debug page)."""
    return JsonResponse(error_body({DETAIL: ["not found."]}), status=404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400: JSON under /api/ (a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(error_body({DETAIL: [too_big_message()]}), status=413)
        return JsonResponse(error_body({DETAIL: ["bad request."]}), status=400)
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body({DETAIL: ["internal error; it has been logged."]}), status=500)
    return defaults.server_error(request)


# --- Shared view parts ---------------------------------------------------------------------------

# Largest id the API looks up: a bigger number cannot be a row (SQLite and PostgreSQL ids are
# 64-bit) and would overflow the query instead of answering 404 or 400.
MAX_ID = 2**63 - 1


class IdConverter:
    """URL converter <id:...>: a database id of up to 18 digits (longer ones match no route: 404)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


@extend_schema_field({"type": "integer", "minimum": 0, "maximum": MAX_ID})
class IdFilter(filters.NumberFilter):
    """An id query parameter: a whole number within the id range, else 400 (not an overflowing query)."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (the API and the web UI refuse it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


def refuse_nul(value: Any) -> None:
    """Validator: no NUL character anywhere in a JSON value (PostgreSQL's jsonb cannot store one: a 500, not a 400)."""
    if has_nul(value):
        raise serializers.ValidationError("must not contain NUL characters (\\u0000).")


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JsonObjectField(serializers.JSONField):
    """A JSON field whose value is an object: documented as one (a bare JSONField says "any value"); no NULs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators = [*self.validators, refuse_nul]


class ModelSerializer(serializers.ModelSerializer):
    """ModelSerializer whose model JSONFields (inputs, headers, ... always objects here) are JsonObjectFields."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JsonObjectField,
    }


# Rows a list counts at most: past it, count says "more than COUNT_LIMIT" (count_capped) instead of
# counting on. An exact COUNT(*) of 10 million executions takes seconds, the page itself milliseconds.
COUNT_LIMIT = 10_000


class CappedPage(Page):
    """A page of a CappedPaginator past its count limit: whether a next page exists is known from the
    extra row fetched with it, not from the (unknown) number of pages."""

    def __init__(self, object_list: Any, number: int, paginator: CappedPaginator, *, has_more: bool) -> None:
        super().__init__(object_list, number, paginator)
        self.has_more = has_more

    def has_next(self) -> bool:
        return self.has_more

    def end_index(self) -> int:
        return (self.number - 1) * self.paginator.per_page + len(self.object_list)


class CappedPaginator(Paginator):
    """Django's Paginator with a count that stops at ``count_limit`` (the API's and the admin's lists).

    ``count`` is exact up to the limit; past it, it is the limit and ``capped`` is True. It is
    counted as ``SELECT COUNT(*) FROM (SELECT id ... LIMIT limit + 1)``, so it reads at most that
    many rows, whatever the table's size. While capped, the number of pages is unknown: any page
    number is served (an empty page past the first is EmptyPage), and a page fetches one row more
    than it shows to tell whether a next one exists. Pages stay at one query each.
    """

    count_limit = COUNT_LIMIT

    @cached_property
    def _counted(self) -> int:
        """Rows counted, at most count_limit + 1 (one more means there are more than the limit)."""
        rows = self.object_list
        if isinstance(rows, QuerySet):
            # values("pk"): the count's subquery selects no annotations (a LIMITed subquery would
            # evaluate each of them, e.g. a trigger's last status, for every row it counts).
            return rows.order_by().values("pk")[: self.count_limit + 1].count()
        return min(len(rows), self.count_limit + 1)

    @cached_property
    def count(self) -> int:
        return min(self._counted, self.count_limit)

    @property
    def capped(self) -> bool:
        """True when there are more rows than ``count`` says."""
        return self._counted > self.count_limit

    def validate_number(self, number: Any) -> int:
        try:
            return super().validate_number(number)
        except EmptyPage:
            # Past the counted pages while capped: the page may well exist (page() finds out).
            if self.capped and int(number) >= 1:
                return int(number)
            raise

    def page(self, number: Any) -> Page:
        """The page (memoized: the admin's template asks again whether it has a next one)."""
        number = self.validate_number(number)
        pages: dict[int, Page] = self.__dict__.setdefault("_pages", {})
        if number not in pages:
            pages[number] = self._read_page(number)
        return pages[number]

    def _read_page(self, number: int) -> Page:
        if not self.capped:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        if not rows and number > 1:
            raise EmptyPage(self.error_messages["no_results"])
        return CappedPage(rows[: self.per_page], number, self, has_more=len(rows) > self.per_page)


class Pagination(pagination.PageNumberPagination):
    """?page=N&page_size=M (at most 500); answers count, count_capped, next, previous and results.

    Counts stop at COUNT_LIMIT (see CappedPaginator): with count_capped true there are more rows
    than count, and next links keep going as long as rows follow.
    """

    page_size_query_param = "page_size"
    max_page_size = 500
    django_paginator_class = CappedPaginator

    def get_page_number(self, request: Any, paginator: CappedPaginator) -> Any:
        if request.query_params.get(self.page_query_param) in self.last_page_strings and paginator.capped:
            # DRF would answer the last counted page, which is not the last page.
            raise exceptions.NotFound(
                f"page=last is unknown past {paginator.count_limit} rows (count_capped); narrow the list with "
                "filters instead."
            )
        return super().get_page_number(request, paginator)

    def get_paginated_response(self, data: Any) -> Response:
        paginator = self.page.paginator
        return Response(
            {
                "count": paginator.count,
                "count_capped": getattr(paginator, "capped", False),
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        answer = super().get_paginated_response_schema(schema)
        answer["required"] = ["count", "count_capped", "results"]
        answer["properties"]["count"]["description"] = (
            f"How many rows match, counted up to {COUNT_LIMIT}; when count_capped is true there are more than this."
        )
        properties = {
            "count": answer["properties"]["count"],
            "count_capped": {
                "type": "boolean",
                "description": f"True: more than {COUNT_LIMIT} rows match; the count stopped there. next still "
                "links every following page; page=last is refused (404).",
            },
        }
        answer["properties"] = {**properties, **answer["properties"]}
        return answer


class StableOrderingFilter(OrderingFilter):
    """DRF's OrderingFilter, with the primary key as the last key unless it is already there.

    Rows that tie on the requested keys (the executions of one slot, often thousands) then keep one
    order from page to page, so paging never repeats or skips them; the key takes the direction of
    the last one, so (-scheduled_for, -pk) is read straight off an index on (-scheduled_for, -id).
    """

    def get_ordering(self, request: Any, queryset: QuerySet, view: Any) -> list[str]:
        ordering = list(super().get_ordering(request, queryset, view) or [])
        if not ordering or {term.lstrip("-") for term in ordering} & {"pk", queryset.model._meta.pk.name}:
            return ordering
        return [*ordering, "-pk" if ordering[-1].startswith("-") else "pk"]


class ScopedThrottle(throttling.ScopedRateThrottle):
    """ScopedRateThrottle reading the rates when asked, so a changed setting applies (DRF reads them at import)."""

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class WriteThrottleMixin:
    """Throttle writes per user: scope "runs" for the actions in ``run_actions``, "writes" for the others."""

    run_actions: frozenset[str] = frozenset()

    def get_throttles(self) -> list[throttling.BaseThrottle]:
        request = self.request  # type: ignore[attr-defined]
        if request.method in SAFE_METHODS:
            return []
        action = getattr(self, "action", None)
        self.throttle_scope = "runs" if action in self.run_actions else "writes"
        return [ScopedThrottle()]


def owned(queryset: QuerySet, user: Any, owner_path: str = "owner") -> QuerySet:
    """Only ``user``'s objects (staff see everyone's): another user's object simply does not exist."""
    if not user.is_authenticated:  # e.g. the schema generator's anonymous request
        return queryset.none()
    if user.is_staff:
        return queryset
    return queryset.filter(**{owner_path: user})


class StrictFieldsMixin:
    """Refuse fields a serializer does not have (a typo like "enabeld" is an error, not ignored)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError({name: ["unknown field."] for name in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]


# --- Schema -------------------------------------------------------------------------------------


class StrictFieldsSchema(OpenApiSerializerExtension):
    """Request bodies of StrictFieldsMixin serializers say so: other properties are refused (400), not ignored."""

    target_class = "scheduler_project.api.StrictFieldsMixin"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "object",
            "description": 'Messages by field; "non_field_errors" for the input as a whole, "detail" for the rest.',
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        }
    },
    "required": ["errors"],
}


def schema_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular hook: every operation documents the errors it can answer, all in the Error format."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            errors: dict[str, str] = {}
            if operation.get("security"):
                errors["400"] = "Bad input: which field and what is allowed."
                errors["401"] = "No or a wrong token (WWW-Authenticate: Token)."
                if method in ("post", "put", "patch", "delete"):
                    errors["429"] = "Too many writes or runs; Retry-After says when to try again."
            paged = any(parameter.get("name") == "page" for parameter in operation.get("parameters", []))
            if "{" in path:
                errors["404"] = "No such object among yours" + (", or no such page." if paged else ".")
            elif paged:
                # DRF's PageNumberPagination answers a page past the last one (or not a number) with 404.
                errors["404"] = "No such page."
            # Error answers a view documents itself (409, 503, ...) come in the same format.
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400 and "content" not in response:
                    errors[code] = response.get("description") or "Error."
            for code, description in errors.items():
                if "content" not in responses.get(code, {}):
                    responses[code] = {"description": responses.get(code, {}).get("description") or description}
                    responses[code]["content"] = ref
    return result


class UtcIsoDateTimeRangeField(IsoDateTimeRangeField):
    """ISO 8601 bounds, turned into UTC and kept within 1970-2999.

    PostgreSQL refuses offsets beyond +-15:59 that Python accepts, and far years overflow:
    both would otherwise reach the database and fail there (a 500) instead of being bad input.
    """

    def compress(self, data_list: Any) -> slice | None:
        value = super().compress(data_list)
        if value is None:
            return None
        bounds = []
        for bound in (value.start, value.stop):
            if bound is not None:
                if not 1970 <= bound.year <= 2999:
                    raise forms.ValidationError("must be a time between 1970 and 2999.", code="out_of_range")
                bound = bound.astimezone(UTC)
                if not 1970 <= bound.year <= 2999:
                    raise forms.ValidationError("must be a time between 1970 and 2999.", code="out_of_range")
            bounds.append(bound)
        return slice(*bounds)


class UtcIsoDateTimeFromToRangeFilter(filters.IsoDateTimeFromToRangeFilter):
    """A `<name>_after` / `<name>_before` filter whose bounds are validated and compared in UTC."""

    field_class = UtcIsoDateTimeRangeField
