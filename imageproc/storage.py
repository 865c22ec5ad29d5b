"""The absolute URLs of stored outputs, as handed to clients (local files or S3)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage, storages


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
