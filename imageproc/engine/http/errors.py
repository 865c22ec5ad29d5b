"""FetchError, the only exception fetch_image() and post() raise, and what callers need to
decide on a retry: whether a failure may pass by itself, and the server's Retry-After."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

# Failures that may go away by themselves: the origin was slow, unreachable, reset the
# connection or is unknown to DNS for now. Everything else fails the same way next time.
_TRANSIENT_CODES = frozenset({"timeout", "connect_error", "dns_error", "fetch_error"})


def transient_status(status: int) -> bool:
    """True for HTTP answers that ask to try again later: 408, 429 and every 5xx."""
    return status in (408, 429) or 500 <= status <= 599


class FetchError(Exception):
    """``code`` is machine-readable: invalid_url, blocked_address, dns_error, connect_error,
    timeout, too_large, too_many_redirects, redirect_blocked, not_an_image, fetch_error, or
    ``http_<status>`` for a non-2xx answer to fetch_image.

    ``retry_after``: seconds the server asked to wait (the Retry-After of a 429 or 503).
    ``transient``: whether trying again later may succeed (see ``_TRANSIENT_CODES`` and
    ``transient_status``); a raiser that knows better passes it explicitly.
    """

    def __init__(
        self, code: str, message: str, *, retry_after: float | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self._transient = transient

    @property
    def transient(self) -> bool:
        if self._transient is not None:
            return self._transient
        if self.code.startswith("http_") and self.code[5:].isdigit():
            return transient_status(int(self.code[5:]))
        return self.code in _TRANSIENT_CODES

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"FetchError({self.code!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (task queues), keyword fields included
        return (_rebuild, (self.code, self.message, self.retry_after, self._transient))


def _rebuild(code: str, message: str, retry_after: float | None, transient: bool | None) -> FetchError:
    return FetchError(code, message, retry_after=retry_after, transient=transient)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
