"""The upload throttle."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from requests_app.models import ApiKey


class UploadThrottle(SimpleRateThrottle):
    """Uploads per API key at settings.UPLOAD_THROTTLE_RATE (per user for an admin session).

    Keyed by the key's id rather than the client, as the issue asks: a client that needs more
    can be given a second key, and one leaked key cannot exhaust the others. DRF throttles
    are not atomic (read, then write the cache): this limits abuse, it is not a quota.
    """

    scope = "uploads"

    def get_rate(self) -> str | None:
        # Read per request, not once at import like DRF's THROTTLE_RATES, so that the
        # setting is the one source (settings/base.py validates it at start-up).
        return settings.UPLOAD_THROTTLE_RATE or None

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
