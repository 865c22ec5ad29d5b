"""Domain errors of the services. Each interface translates them to its medium: the API in
one exception handler (requests_app.api.errors), the admin as messages or form errors, the
commands as CommandError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A domain error; `status_code` and `code` are what the API answers with."""

    status_code = 400
    code = "error"


class InvalidOptions(ServiceError):
    """Options of a use case that break its rules, each field with its messages, e.g.
    {"quality": ["..."]}. The API answers them under the field's name, as DRF does for a
    form field; the admin puts them on its form's fields; the commands name their flag."""

    status_code = 400
    code = "invalid_options"

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        self.errors: dict[str, list[str]] = {field: list(messages) for field, messages in errors.items()}
        super().__init__("; ".join(f"{field}: {' '.join(messages)}" for field, messages in self.errors.items()))


class RequestNotFinished(ServiceError):
    status_code = 409
    code = "not_finished"


class TooManyActiveRequests(ServiceError):
    status_code = 429
    code = "too_many_active_requests"


class ApiClientExists(ServiceError):
    """Onboarding a client under a name that is taken, when the caller wanted a new one."""

    status_code = 409
    code = "client_exists"
