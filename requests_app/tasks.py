"""django-q2 task entry points for requests."""

from __future__ import annotations

from requests_app import services


def finalize_request(request_id: str) -> str | None:
    return services.request_finalize(request_id=request_id)
