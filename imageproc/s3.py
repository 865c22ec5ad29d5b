"""The S3 storage backend of outputs (settings: S3_BUCKET): django-storages' S3Storage with
the caching headers each kind of object needs.

Content-Type comes from the `content_type` the pipeline sets on every file it saves
(image/jpeg, image/webp, text/csv), else from the name's extension.
"""

from __future__ import annotations

from typing import Any

from storages.backends.s3 import S3Storage

# An image output is written under a key derived from its request and source URL, and is
# never changed afterwards: caches may keep it for a year without asking again.
IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# The output CSV is rewritten when failed images are retried, and its links may be
# presigned: caches must check it every time.
CSV_CACHE_CONTROL = "no-cache"


class OutputS3Storage(S3Storage):  # type: ignore[misc]  # django-storages ships no type hints
    def get_object_parameters(self, name: str) -> dict[str, Any]:
        params: dict[str, Any] = super().get_object_parameters(name)
        params.setdefault("CacheControl", CSV_CACHE_CONTROL if name.endswith(".csv") else IMAGE_CACHE_CONTROL)
        return params
