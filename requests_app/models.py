"""API clients, their keys, and processing requests (one per uploaded CSV)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from typing import ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from imageproc.engine import csv_io

KEY_PREFIX_LENGTH = 8


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class ApiClient(models.Model):
    """A programmatic client of the API. It is a Django user, so that admin staff and API
    clients own requests in the same way."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_client")
    created_at = models.DateTimeField(default=timezone.now)

    # Webhooks (requests_app/services/webhooks.py). The secret is kept in clear, unlike API keys: an
    # HMAC is signed with the secret itself, so a hash of it would be useless.
    webhook_secret = models.CharField(max_length=100, default=new_webhook_secret)
    # Set by a rotation; deliveries carry a signature with it too until
    # WEBHOOK_SECRET_ROTATION_HOURS after webhook_secret_rotated_at, then the sweeper clears it.
    previous_webhook_secret = models.CharField(max_length=100, blank=True)
    webhook_secret_rotated_at = models.DateTimeField(null=True, blank=True)
    # Used for requests uploaded without a webhook_url.
    default_webhook_url = models.URLField(max_length=2048, blank=True)
    # Set when a receiver answered 410 Gone: no delivery is attempted until a resend (or an
    # admin) clears it.
    webhook_disabled_at = models.DateTimeField(null=True, blank=True)
    webhook_disabled_reason = models.TextField(blank=True)
    # Its share of the workers while other clients have work too (imageproc.pipeline.fairness,
    # docs/sharing.md): a client of weight 2 gets twice the share of one of weight 1.
    weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(100.0)],
        help_text="Its share of the workers against other clients with work at the same time: "
        "2 gets twice the share of 1, 0.5 half of it.",
    )

    class Meta:
        verbose_name = "API client"

    def __str__(self) -> str:
        return self.user.get_username()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """An API key. Only a SHA-256 of the key is stored: keys are 256-bit random strings,
    so a fast hash is enough (there is nothing to brute-force), and the database alone
    cannot authenticate anyone. The prefix identifies a key to people and for revocation."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="keys")
    prefix = models.CharField(max_length=KEY_PREFIX_LENGTH, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[ApiKeyQuerySet] = ApiKeyQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = "API key"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.client})"

    @staticmethod
    def hash(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @staticmethod
    def generate() -> tuple[str, str]:
        """A new raw key and its prefix. The raw key is shown once and never stored."""
        prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
        return f"ipk_{prefix}_{secrets.token_urlsafe(32)}", prefix

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class RequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    # Every image has ended; one task has claimed the right to write the output.
    FINALIZING = "finalizing", "Finalizing"
    COMPLETED = "completed", "Completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors", "Completed with errors"
    FAILED = "failed", "Failed"


FINISHED_STATUSES = (RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_ERRORS, RequestStatus.FAILED)


class OutputFormat(models.TextChoices):
    JPEG = "jpeg", "JPEG"
    WEBP = "webp", "WebP"
    AVIF = "avif", "AVIF"
    # Per image, the smallest of JPEG, WebP and AVIF that meets the quality target.
    AUTO = "auto", "Auto (smallest of JPEG, WebP, AVIF)"


class QualityMode(models.TextChoices):
    """The automatic qualities: per image, the lowest quality whose perceptual score meets
    the level's target (imageproc.engine.imaging.quality). "auto" is stored as "auto:good"."""

    HIGH = "auto:high", "Auto, high"
    GOOD = "auto:good", "Auto, good"
    ECO = "auto:eco", "Auto, eco"


class ProcessingRequest(models.Model):
    """One uploaded CSV. Its id is the request_id clients see. The counters move only
    through F() updates made by the task that changed an image's state."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="processing_requests")
    status = models.CharField(max_length=24, choices=RequestStatus.choices, default=RequestStatus.PENDING)
    original_filename = models.CharField(max_length=255, blank=True)
    # NULL, not "", when absent: the unique constraint must ignore requests without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    webhook_url = models.URLField(max_length=2048, blank=True)

    # The quality asked for is either a number (quality, quality_mode "") or an automatic
    # level (quality_mode, quality NULL): two columns rather than one string, so that the rows
    # made before automatic qualities existed stay valid as they are. `quality_option` is the
    # one value the API, the admin and the pipeline read.
    quality = models.PositiveSmallIntegerField(null=True, blank=True, default=50)
    quality_mode = models.CharField(max_length=10, choices=QualityMode.choices, blank=True)
    output_format = models.CharField(max_length=8, choices=OutputFormat.choices, default=OutputFormat.JPEG)
    # EXIF Artist and Copyright (and the XMP rights) go into the outputs; off: every bit of
    # metadata is dropped.
    keep_copyright = models.BooleanField(default=True)
    # Renditions (imageproc.engine.renditions): the bounding-box edges asked, largest first;
    # empty for one output per image at its own size. The first is the output CSV's main
    # column and the image's own output fields; every size is a products.ImageOutput row.
    sizes = models.JSONField(default=list, blank=True)

    products_total = models.PositiveIntegerField(default=0)
    images_total = models.PositiveIntegerField(default=0)
    images_done = models.PositiveIntegerField(default=0)
    images_failed = models.PositiveIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    output_csv_name = models.CharField(max_length=255, blank=True)
    # Two checkpoints of the finished count (done + failed) for the ETA, moved every ~10 s by
    # the workers while the request is processing (imageproc.pipeline.fairness): the rate is
    # measured from the base to now, over the last 10-20 s (requests_app.selectors).
    rate_mark_at = models.DateTimeField(null=True, blank=True)
    rate_mark_finished = models.PositiveIntegerField(default=0)
    rate_base_at = models.DateTimeField(null=True, blank=True)
    rate_base_finished = models.PositiveIntegerField(default=0)
    # When a retry of its failed images put the finished request back to processing, and its
    # finished count then: the rate and the ETA of the run count from there, not from
    # started_at (requests_app.selectors.request_rate).
    resumed_at = models.DateTimeField(null=True, blank=True)
    resumed_finished = models.PositiveIntegerField(default=0)
    # The upload's columns as written and its dialect, as the CSV parser found them
    # (imageproc.engine.csv_io.CsvLayout): the output CSV gives them back. Empty for requests
    # made before they were recorded: the output then has the standard four columns in UTF-8.
    csv_header = models.JSONField(default=list, blank=True)
    csv_encoding = models.CharField(max_length=16, blank=True)
    csv_delimiter = models.CharField(max_length=1, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="request_owner_created"),
            models.Index(fields=["status", "updated_at"], name="request_status_updated"),
        ]
        constraints = [
            # No `condition`: SQL treats NULLs as distinct and the MongoDB backend indexes only
            # documents whose key is a string, so requests without a key never collide. A
            # condition would make MongoDB's migrate fail ("isnull" in a partial index).
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="request_unique_idempotency_key")
        ]

    def __str__(self) -> str:
        return str(self.id)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def quality_option(self) -> int | str:
        """The quality asked for: 1..95, or "auto:high" / "auto:good" / "auto:eco"."""
        if self.quality_mode:
            return self.quality_mode
        return self.quality if self.quality is not None else 50

    @property
    def images_finished(self) -> int:
        return self.images_done + self.images_failed

    @property
    def percent(self) -> float:
        if not self.images_total:
            return 100.0
        return round(100 * self.images_finished / self.images_total, 1)

    @property
    def bytes_saved(self) -> int:
        return self.bytes_in - self.bytes_out

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        end = self.completed_at or timezone.now()
        return (end - self.started_at).total_seconds()

    @property
    def csv_dialect(self) -> csv_io.CsvDialect:
        """The dialect the upload came in (UTF-8 with commas when it was not recorded)."""
        return csv_io.CsvDialect(
            encoding=self.csv_encoding or csv_io.STANDARD_DIALECT.encoding,
            delimiter=self.csv_delimiter or csv_io.STANDARD_DIALECT.delimiter,
        )

    def final_status(self) -> str:
        """The end state that the counters call for."""
        if self.images_failed == 0:
            return RequestStatus.COMPLETED
        if self.images_done == 0:
            return RequestStatus.FAILED
        return RequestStatus.COMPLETED_WITH_ERRORS

    def get_status_path(self) -> str:
        return reverse("csv-status", kwargs={"pk": self.pk})

    def get_output_path(self) -> str:
        return reverse("csv-output", kwargs={"pk": self.pk})


class WebhookStatus(models.TextChoices):
    # Due at next_retry_at (while an attempt is in flight, next_retry_at is its lease's end).
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    # This attempt failed; next_retry_at says when the next one is due, or is empty when
    # this was the last (see error).
    FAILED = "failed", "Failed"
    # The receiver answered 410 Gone, or the client's webhooks were disabled when it was due.
    DISABLED = "disabled", "Disabled"


class WebhookDelivery(models.Model):
    """One attempt to deliver one event: the delivery log. All attempts of one event share
    `event_id` (the `webhook-id` header) and `payload` (the exact body sent); the unique
    (event_id, attempt) pair makes creating an event, a retry or a resend idempotent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request = models.ForeignKey(ProcessingRequest, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)
    url = models.URLField(max_length=2048)
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.PENDING)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    attempted_at = models.DateTimeField(null=True, blank=True)
    payload = models.TextField()

    class Meta:
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["status", "next_retry_at"], name="webhook_delivery_due"),
            models.Index(fields=["request", "-created_at"], name="webhook_delivery_request"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "attempt"], name="webhook_delivery_unique_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} #{self.attempt}"
