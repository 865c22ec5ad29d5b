"""Products of a request, and their images: the unit of work of the pipeline."""

from __future__ import annotations

import uuid

from django.db import models


class Product(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request = models.ForeignKey("requests_app.ProcessingRequest", on_delete=models.CASCADE, related_name="products")
    # Row order in the uploaded CSV; also the order of every output.
    position = models.PositiveIntegerField()
    serial_number = models.CharField(max_length=255)
    product_name = models.CharField(max_length=1024)
    # The cells of the upload's other columns, in order (csv_io.ParsedRow.extra): the output
    # CSV puts them back in their places (ProcessingRequest.csv_header).
    extra_cells = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ("request_id", "position")  # the column: ordering by the FK would join
        constraints = [
            models.UniqueConstraint(fields=["request", "position"], name="product_unique_position"),
        ]

    def __str__(self) -> str:
        return f"{self.serial_number} {self.product_name}"


class ImageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ProductImage(models.Model):
    """One input URL of one product. The request FK is direct so that claims, counters
    and sweeps filter one table (MongoDB cannot update across relations)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request = models.ForeignKey("requests_app.ProcessingRequest", on_delete=models.CASCADE, related_name="images")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    position = models.PositiveSmallIntegerField()
    source_url = models.TextField()
    # SHA-256 of source_url: groups duplicates of one URL in a request and names its output.
    source_key = models.CharField(max_length=64)

    status = models.CharField(max_length=16, choices=ImageStatus.choices, default=ImageStatus.PENDING)
    # Claims that ended in a crash or a timeout (capped by IMAGE_MAX_ATTEMPTS). A claim
    # given back because a dependency was briefly down does not count.
    attempts = models.PositiveSmallIntegerField(default=0)
    # Set by the task that claimed the image; only that task may record its result.
    claim_token = models.CharField(max_length=32, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The claim's lease: the live worker holding it renews it while it works; the sweeper
    # takes back a `processing` image whose lease has run out (its worker is dead).
    lease_until = models.DateTimeField(null=True, blank=True)
    # A `pending` image set aside after a transient error (origin or storage down) is
    # queued again from then on, by the sweeper.
    retry_at = models.DateTimeField(null=True, blank=True)
    # Transient errors of the origin so far (capped by FETCH_RETRY_MAX); the last one is
    # in error_code and error_message until the image ends.
    transient_errors = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    output_name = models.CharField(max_length=255, blank=True)
    kept_original = models.BooleanField(default=False)
    bytes_in = models.BigIntegerField(null=True, blank=True)
    bytes_out = models.BigIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    input_format = models.CharField(max_length=16, blank=True)
    # What the engine made of it (imageproc.engine.compress.CompressResult): the format of
    # the output ("jpeg", "webp", "avif", or "png"/"gif" for a kept or lossless graphic),
    # which candidate won (compress.CANDIDATES: "reencoded", "original", "lossless_png", ...),
    # the encoder quality used (NULL for an original or a lossless output), the predicted
    # SSIMULACRA2 score reached (NULL unless the quality was automatic), the encoder.
    output_format = models.CharField(max_length=8, blank=True)
    candidate = models.CharField(max_length=24, blank=True)
    quality_chosen = models.PositiveSmallIntegerField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True)
    encoder = models.CharField(max_length=16, blank=True)
    fetch_ms = models.PositiveIntegerField(null=True, blank=True)
    compress_ms = models.PositiveIntegerField(null=True, blank=True)
    store_ms = models.PositiveIntegerField(null=True, blank=True)

    # Not a column: the absolute URL of the output, set by requests_app.selectors on the
    # images it reads (None where the image is not done).
    output_url: str | None = None
    # Not a column: for a request with sizes, the image's ImageOutput rows (largest first),
    # each with its `url`, set by requests_app.selectors (None: not read).
    sized_outputs: list[ImageOutput] | None = None

    class Meta:
        ordering = ("product_id", "position")  # the column: ordering by the FK would join
        indexes = [
            models.Index(fields=["request", "status"], name="image_request_status"),
            models.Index(fields=["product", "position"], name="image_product_position"),
            models.Index(fields=["status", "claimed_at"], name="image_status_claimed"),
            models.Index(fields=["status", "lease_until"], name="image_status_lease"),
            models.Index(fields=["status", "retry_at"], name="image_status_retry"),
            models.Index(fields=["claim_token"], name="image_claim_token"),
        ]

    def __str__(self) -> str:
        return self.source_url


class ImageOutput(models.Model):
    """One stored rendition of an image: the output for one size (bounding-box edge) of a
    request that asked for sizes. Boxes at or above the source's own size share one stored
    output (the source at its size). Written as each upload ends, so that a worker that
    dies between two sizes leaves the ones done, and the next attempt makes only the
    others; (image, size) is unique, so no attempt adds a second row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Direct, as on ProductImage: a request's outputs are read and deleted in one filter.
    request = models.ForeignKey(
        "requests_app.ProcessingRequest", on_delete=models.CASCADE, related_name="image_outputs"
    )
    image = models.ForeignKey(ProductImage, on_delete=models.CASCADE, related_name="outputs")
    size = models.PositiveIntegerField()
    name = models.CharField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.BigIntegerField()
    format = models.CharField(max_length=8)
    kept_original = models.BooleanField(default=False)

    # Not a column: the absolute URL, set by requests_app.selectors.
    url: str | None = None

    class Meta:
        ordering = ("image_id", "-size")  # the columns: ordering by the FK would join
        constraints = [
            models.UniqueConstraint(fields=["image", "size"], name="image_output_unique_size"),
        ]
        indexes = [models.Index(fields=["request", "size"], name="image_output_request_size")]

    def __str__(self) -> str:
        return f"{self.size}px {self.name}"
