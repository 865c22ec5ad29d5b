"""Sizes and durations as people read them: the admin, the management commands and anything
else that prints them use these two, so "1.9 MB" and "2 min 05 s" look the same everywhere."""

from __future__ import annotations

from django.template.defaultfilters import filesizeformat

# What an empty value shows.
NOTHING = "\N{EN DASH}"


def human_bytes(n: int | None) -> str:
    """1.9 MB; an en dash for None. A plain space between number and unit (Django's
    filesizeformat puts a no-break space, which terminals show oddly)."""
    if n is None:
        return NOTHING
    return str(filesizeformat(n)).replace("\xa0", " ")


def human_duration(seconds: float | None) -> str:
    """12.5 s, 3 min 07 s, 2 h 05 min; an en dash for None."""
    if seconds is None:
        return NOTHING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
