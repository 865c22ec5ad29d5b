"""The strip above the requests list: is the service working?"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from imageproc import health
from requests_app.models import ProcessingRequest, RequestStatus
from requests_app.services.requests import ACTIVE_STATUSES

WITH_FAILURES = (RequestStatus.FAILED, RequestStatus.COMPLETED_WITH_ERRORS)


def service_overview() -> dict[str, Any]:
    """Are workers running, how much is queued, how many requests are in flight or ended with
    failures lately. Both counts are range scans of the (status, updated_at) index, whatever
    the size of the table."""
    since = timezone.now() - timedelta(days=1)
    return {
        "workers": health.workers_check(),
        "active": ProcessingRequest.objects.filter(status__in=ACTIVE_STATUSES).count(),
        # A finished request is not updated after its completion: updated_at is when it ended.
        "failed_today": ProcessingRequest.objects.filter(status__in=WITH_FAILURES, updated_at__gte=since).count(),
    }
