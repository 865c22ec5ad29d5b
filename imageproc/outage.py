"""A dependency of the web process down (the database restarting, Redis away): a 503 that
says which and when to come back, never a 500 or a hang.

A middleware, so that it covers every view (the API, the admin, the front page) alike: the
API's own exception handler sees only DRF's views, and whatever it does not handle reaches
process_exception here. /health/ reports each dependency itself and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db.utils import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

# Seconds a client should wait before trying again (a restart takes a few).
RETRY_AFTER = 10


def _unavailable(exc: Exception) -> str | None:
    """Which dependency `exc` says is down, or None if it says something else."""
    if isinstance(exc, OperationalError | InterfaceError):
        return "database"
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return None
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "queue"
    return None


_DETAILS = {
    "database": "The database is unavailable at the moment; nothing was stored. Try again in a few seconds.",
    "queue": "The task queue (Redis) is unavailable at the moment. Try again in a few seconds.",
}


class DependencyOutageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        which = _unavailable(exception)
        if which is None:
            return None
        logger.warning("%s %s: 503, the %s is unavailable: %s", request.method, request.path, which, exception)
        response = JsonResponse({"error": "service_unavailable", "detail": _DETAILS[which]}, status=503)
        response["Retry-After"] = str(RETRY_AFTER)
        return response
