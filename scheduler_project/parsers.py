"""The API's JSON parser (its own module: DRF's views read DEFAULT_PARSER_CLASSES when imported)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers
from rest_framework.settings import api_settings

from workflows.validators import MAX_JSON_DEPTH, json_problem


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing what would fail later: nesting deeper than MAX_JSON_DEPTH (Python's
    own parser raises RecursionError near 1,000 levels: a 500) and text with unpaired surrogates
    (PostgreSQL's jsonb refuses "\\ud800": a 500). Each is a 400 naming the top-level field."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.") from None
        problem = json_problem(data)
        if problem is not None:
            path, message = problem
            field, _, rest = path.partition(".")
            raise exceptions.ValidationError(
                {field or api_settings.NON_FIELD_ERRORS_KEY: [f"{rest}: {message}" if rest else message]}
            )
        return data
