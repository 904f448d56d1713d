"""Template helpers of the web UI: times in the user's zone with the UTC instant on hover, relative
times ("in 3 min"), durations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()


def _relative(at: datetime, now: datetime) -> str:
    """'in 5 min', '3 h ago', 'in 2 days'."""
    seconds = (at - now).total_seconds()
    future = seconds >= 0
    seconds = abs(seconds)
    if seconds < 45:
        return "in a few seconds" if future else "just now"
    if seconds < 90 * 60:
        text = f"{max(round(seconds / 60), 1)} min"
    elif seconds < 2 * 86400:
        text = f"{round(seconds / 3600)} h"
    else:
        text = f"{round(seconds / 86400)} days"
    return f"in {text}" if future else f"{text} ago"


@register.simple_tag(takes_context=True)
def moment(context: template.Context, at: datetime | None, relative: bool = False, zone: str = "") -> str:
    """``<time>`` showing ``at`` in the user's zone (or ``zone``), the UTC instant on hover; with
    ``relative``, "in 3 h" / "5 min ago" after it. Blank for None."""
    if at is None:
        return mark_safe('<span class="muted">—</span>')  # noqa: S308 - a constant
    tz = None
    if zone:
        from schedules import timing

        tz = timing.zone(zone)
    local = timezone.localtime(at, tz)
    utc = at.astimezone(UTC)
    text = f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}"
    if relative:
        now = context.get("now") or timezone.now()
        return format_html(
            '<time datetime="{}" title="{} UTC">{}</time> <span class="relative">({})</span>',
            utc.isoformat(),
            f"{utc:%Y-%m-%d %H:%M:%S}",
            text,
            _relative(at, now),
        )
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>', utc.isoformat(), f"{utc:%Y-%m-%d %H:%M:%S}", text
    )


@register.filter
def duration(ms: int | float | None) -> str:
    """1234 -> '1.2 s', 80 -> '80 ms'."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


@register.filter
def ms_until(start: datetime | None, end: datetime | None) -> float | None:
    """Milliseconds from ``start`` to ``end`` (None if either is missing), for ``|duration``."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000


@register.filter
def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


@register.filter
def as_json(value: Any) -> str:
    """Indented JSON for a <pre> (autoescaped by the template)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@register.filter
def wall(at: datetime | None) -> str:
    """A datetime in its own zone, unconverted: 'Mon 09:00 EST' (the schedule's wall clock)."""
    return "" if at is None else f"{at:%a %H:%M} {at.tzname()}"


@register.simple_tag(takes_context=True)
def same_zone(context: template.Context, at: datetime | None) -> bool:
    """Whether ``at`` reads the same in the user's zone (then its own wall clock adds nothing)."""
    return at is None or timezone.localtime(at).utcoffset() == at.utcoffset()
