"""The storage of outputs, local files or S3: the absolute URLs handed to clients, which of
its errors are transient, and the health check.
"""

from __future__ import annotations

import errno
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from django.conf import settings
from django.core.files.storage import default_storage, storages

# S3 error codes that mean "not now" rather than "not this".
_S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException"}
)
_OS_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ENOSPC, errno.EDQUOT, errno.ESTALE})


def absolute_url(path_or_url: str) -> str:
    """Storage URLs are absolute for S3 and relative (/media/...) for local files."""
    if path_or_url.startswith(("http://", "https://")):
        return path_or_url
    return f"{settings.PUBLIC_BASE_URL}{path_or_url}"


def output_url(name: str) -> str:
    return absolute_url(default_storage.url(name))


def output_url_policy() -> dict[str, Any]:
    """How long the output URLs handed out now stay valid, for the status API.

    `presigned`: signed S3 URLs that expire `expires_in` seconds after they were made
    (each status answer and each download of the output CSV makes fresh ones);
    `public`: S3 behind S3_PUBLIC_BASE_URL (a CDN or public bucket), permanent;
    `local`: files served by this web server under /media/, permanent.
    """
    storage: Any = storages["default"]
    if getattr(storage, "bucket_name", None) is None:
        return {"kind": "local", "expires_in": None}
    if storage.querystring_auth and not storage.custom_domain:
        return {"kind": "presigned", "expires_in": int(storage.querystring_expire)}
    return {"kind": "public", "expires_in": None}


def storage_error_is_transient(exc: BaseException) -> bool:
    """The storage briefly down: S3 answering 5xx or throttling, a refused, reset or timed-out
    connection, a full or busy disk. Not an answer about the request itself (403, 404,
    400): those are a configuration problem that waiting does not fix."""
    if isinstance(exc, HTTPClientError | BotocoreConnectionError):  # refused, closed, timed out
        return True
    if isinstance(exc, ClientError):
        response: dict[str, Any] = getattr(exc, "response", {}) or {}
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or status == 429 or response.get("Error", {}).get("Code") in _S3_TRANSIENT_CODES
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno in _OS_TRANSIENT_ERRNOS


def storage_ping() -> dict[str, Any]:
    """Ask the storage once, without the S3 client's retries (a health check must answer
    now, and say "down" while it is); raises when it is unreachable."""
    storage: Any = storages["default"]
    ping = getattr(storage, "ping", None)
    if ping is not None:
        ping()
    else:
        default_storage.exists("health-check")
    # storages["default"] is the backend itself; default_storage is a lazy wrapper around it.
    return {"backend": type(storage).__name__}
