"""The S3 storage backend of outputs (settings: S3_BUCKET): django-storages' S3Storage with
the caching headers each kind of object needs, and one boto3 client per process for
uploads and presigned URLs.

Content-Type comes from the `content_type` the pipeline sets on every file it saves
(image/jpeg, image/webp, text/csv), else from the name's extension.
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.base import File
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

# An image output is written under a key derived from its request, its source URL and its
# own bytes (imageproc/storage.py), so a key's content never changes: caches may keep it
# for a year without asking again.
IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# The output CSV is rewritten when failed images are retried, and its links may be
# presigned: caches must check it every time.
CSV_CACHE_CONTROL = "no-cache"


# Guards the creation of each storage's client (a module-level lock keeps storages
# copyable and picklable, as Django may need them to be).
_client_lock = threading.Lock()


# Uploads: fail fast enough to be retried by the pipeline (imageproc.pipeline.process), which
# waits with backoff while S3 is down; botocore's defaults (60 s to connect, 60 s to read,
# retried) could keep one upload past a task's time limit.
UPLOAD_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 3})
# The health check asks once and answers now.
PING_CONFIG = Config(connect_timeout=2, read_timeout=3, retries={"mode": "standard", "max_attempts": 1})


def _pool_size(config: Config) -> int:
    # A kept-alive connection for each upload thread of a worker: urllib3 would close and
    # reopen those beyond botocore's default of 10.
    return max(int(config.max_pool_connections), settings.IMAGE_IO_THREADS)


class OutputS3Storage(S3Storage):  # type: ignore[misc]  # django-storages ships no type hints
    _shared_client: Any = None
    _ping_client: Any = None

    def get_object_parameters(self, name: str) -> dict[str, Any]:
        params: dict[str, Any] = super().get_object_parameters(name)
        params.setdefault("CacheControl", CSV_CACHE_CONTROL if name.endswith(".csv") else IMAGE_CACHE_CONTROL)
        return params

    @property
    def client(self) -> Any:
        """One boto3 client for every thread of the process (clients are thread-safe).
        django-storages builds a boto3 session and resource per thread, which cost each
        upload thread of a worker tens of MB (bench/: worker RSS)."""
        with _client_lock:
            if self._shared_client is None:
                self._shared_client = self._create_session().client(
                    "s3",
                    region_name=self.region_name,
                    use_ssl=self.use_ssl,
                    endpoint_url=self.endpoint_url,
                    config=self.client_config.merge(UPLOAD_CONFIG).merge(
                        Config(max_pool_connections=_pool_size(self.client_config))
                    ),
                    verify=self.verify,
                )
            return self._shared_client

    def ping(self) -> None:
        """One HEAD request to the bucket's endpoint, no retries: raises unless S3 answers
        (a missing key is an answer)."""
        with _client_lock:
            if self._ping_client is None:
                self._ping_client = self._create_session().client(
                    "s3",
                    region_name=self.region_name,
                    use_ssl=self.use_ssl,
                    endpoint_url=self.endpoint_url,
                    config=self.client_config.merge(PING_CONFIG),
                    verify=self.verify,
                )
            client = self._ping_client
        try:
            client.head_object(Bucket=self.bucket_name, Key=self._normalize_name(clean_name("health-check")))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise

    def url(
        self, name: str, parameters: dict[str, Any] | None = None, expire: int | None = None, http_method: Any = None
    ) -> str:
        """Presigned URLs from the shared client too: the first one a thread asked for cost
        it a boto3 session and resource (~0.2 s, tens of MB), e.g. a worker finalising a request."""
        if self.custom_domain or not self.querystring_auth:
            return str(super().url(name, parameters, expire, http_method))
        params = {**(parameters or {}), "Bucket": self.bucket_name, "Key": self._normalize_name(clean_name(name))}
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params=params,
                ExpiresIn=self.querystring_expire if expire is None else expire,
                HttpMethod=http_method,
            )
        )

    def _save(self, name: str, content: File[Any]) -> str:
        """A file up to the multipart threshold (every image output) goes up in one PutObject
        on the shared client: s3transfer's upload_fileobj, even without threads, builds a
        transfer manager and futures around that same single request for each file
        (bench/: most of the upload threads' CPU). Bigger files (a large output CSV) and
        gzip take django-storages' own path."""
        try:
            size = content.size
        except (AttributeError, OSError):  # a stream whose size cannot be told
            size = None
        if self.gzip or size is None or size >= self.transfer_config.multipart_threshold:
            return str(super()._save(name, content))
        cleaned = clean_name(name)
        key = self._normalize_name(cleaned)
        params = self._get_write_parameters(key, content)
        content.seek(0)
        self.client.put_object(Bucket=self.bucket_name, Key=key, Body=content.read(), **params)
        return str(cleaned)
