"""Domain errors of the services. Each interface translates them to its medium: the API in
one exception handler, the admin as messages, the commands as CommandError.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A domain error; the API turns it into an HTTP answer (requests_app.api.views)."""

    status_code = 400
    code = "error"


class RequestNotFinished(ServiceError):
    status_code = 409
    code = "not_finished"


class TooManyActiveRequests(ServiceError):
    status_code = 429
    code = "too_many_active_requests"
