"""What the client API reads and what it answers, one serializer each.

Input serializers parse the shape and types of a form; the rules (quality range, formats,
the webhook URL guard, the CSV's size and contents) belong to the services, which raise
domain errors (requests_app.api.errors turns them into answers). The ranges are documented
here from the services' own constants, and checked only there.

Output serializers render every answer: a view passes them an object (a model, or one of
the small instance-like dataclasses below) and answers `.data`. The OpenAPI schema is
generated from the same classes, so the documentation and the answers cannot drift apart
(tests/test_api.py validates real answers against /api/schema/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from imageproc.engine import renditions
from imageproc.engine.compress import CANDIDATES
from imageproc.storage import absolute_url
from products.models import ImageOutput, ImageStatus, Product, ProductImage
from requests_app.models import OutputFormat, ProcessingRequest, RequestStatus, WebhookDelivery, WebhookStatus
from requests_app.selectors import Progress, product_status, request_progress
from requests_app.services.requests import QUALITY_LEVELS, QUALITY_MAX, QUALITY_MESSAGE, QUALITY_MIN, WEBHOOK_URL_MAX

# --- Fields -----------------------------------------------------------------------------------


# The quality asked for: a number, or an automatic level. In the status answer, "auto" is
# given back as "auto:good" (RequestOptions normalises it).
QUALITY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "integer", "minimum": QUALITY_MIN, "maximum": QUALITY_MAX},
        {"type": "string", "enum": list(QUALITY_LEVELS)},
    ],
}


@extend_schema_field({**QUALITY_SCHEMA, "default": settings.IMAGE_DEFAULT_QUALITY, "example": 50})
class QualityField(serializers.Field):  # type: ignore[type-arg]
    """A whole number, or the text of an automatic level: the form sends text, so digits
    become an int and any other text is passed on as it is. The range and the levels are
    RequestOptions' rule: documented here, checked there."""

    default_error_messages = {"invalid": QUALITY_MESSAGE}

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        if not isinstance(data, str):
            self.fail("invalid")
        text = data.strip()
        if text.lstrip("+-").isdecimal() and len(text) <= 6:
            return int(text)
        return text[:40]

    def to_representation(self, value: Any) -> int | str:
        return value  # type: ignore[no-any-return]


class FormBooleanField(serializers.BooleanField):
    """A boolean whose absence from a form means "not given" (its default), not false: DRF's
    BooleanField reads a missing checkbox of an HTML form as false."""

    default_empty_html = serializers.empty


class BlankAsNullField(serializers.CharField):
    """A text column whose empty value ("not known yet") is answered as null."""

    def to_representation(self, value: Any) -> Any:
        return str(value) if value else None


@extend_schema_field({"type": "string", "enum": list(OutputFormat.values), "default": OutputFormat.JPEG.value})
class OutputFormatField(serializers.CharField):
    """A string; the formats are RequestOptions' rule: documented here, checked there."""


# The example is empty on purpose: Swagger UI's "Try it out" fills each form field with its
# example (or `string` without one) and leaves out an empty one, so the default upload
# succeeds; a real-looking URL there would be checked (it must resolve) and refused.
@extend_schema_field({"type": "string", "format": "uri", "maxLength": WEBHOOK_URL_MAX, "example": ""})
class WebhookUrlField(serializers.CharField):
    """A string; the URL rule (https, a public address) is webhook_url_check's: checked there."""


# Empty for the same reason: Swagger would otherwise fill in `string`, which is no list of sizes.
@extend_schema_field({"type": "string", "maxLength": 100, "example": ""})
class SizesField(serializers.CharField):
    """A comma-separated list of sizes; RequestOptions checks it."""


class RequestStatusField(serializers.ChoiceField):
    """A request's status: one enum (RequestStatusEnum) wherever an answer carries it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=RequestStatus.choices, **kwargs)


class AbsoluteUrlField(serializers.URLField):
    """One of our paths (a model's get_status_path, ...) as the absolute link clients follow,
    on PUBLIC_BASE_URL like every link the service hands out."""

    def to_representation(self, value: str) -> str:
        return absolute_url(value)


# --- Input ------------------------------------------------------------------------------------


class UploadSerializer(serializers.Serializer[Any]):
    # An empty file passes here: the CSV parser refuses it as an invalid CSV (with its reason).
    file = serializers.FileField(
        allow_empty_file=True, help_text="The product CSV: S. No., Product Name, Input Image Urls."
    )
    webhook_url = WebhookUrlField(
        required=False,
        allow_blank=True,
        help_text=f"Receives the signed completion webhook, e.g. https://shop.example.com/hooks/imageproc: "
        f"https, a public address, at most {WEBHOOK_URL_MAX} characters. Empty or absent: the client's default "
        "webhook URL, if it has one.",
    )
    quality = QualityField(
        required=False,
        help_text=f"The encoder quality, {QUALITY_MIN}-{QUALITY_MAX}, or an automatic one: per image, the lowest "
        "quality whose perceptual score (SSIMULACRA2 scale) meets the level's target: auto:high, auto:good (= auto, "
        "answered as auto:good), auto:eco. Default: IMAGE_DEFAULT_QUALITY (50); auto:good with output_format=auto.",
    )
    output_format = OutputFormatField(
        required=False,
        help_text="jpeg, webp, avif (smallest, slowest to encode), or auto: per image, the smallest of the three at "
        "the quality target (needs an automatic quality). An output is never larger than its input: the input "
        "itself or a lossless PNG/WebP may be kept instead (see each image's candidate). Default: jpeg.",
    )
    keep_copyright = FormBooleanField(
        required=False,
        help_text="Keep the EXIF Artist and Copyright and the XMP rights in the outputs (all other metadata is "
        "dropped); false drops them too. Default: true.",
    )
    sizes = SizesField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text=f"Renditions: bounding-box edges in pixels, comma-separated, e.g. 1600,800,200 (at most "
        f"{renditions.MAX_SIZES}, each {renditions.SIZE_MIN}-{renditions.SIZE_MAX}). Each image is stored once per "
        "size, fitted inside the box, never enlarged. Empty or absent: one output per image at its own size.",
    )


class NoInputSerializer(serializers.Serializer[Any]):
    """An action that takes no input."""


# --- Progress and requests --------------------------------------------------------------------


class ProgressSerializer(serializers.Serializer[Progress]):
    """Renders a selectors.Progress."""

    images_total = serializers.IntegerField()
    images_done = serializers.IntegerField(help_text="Images compressed and stored.")
    images_failed = serializers.IntegerField()
    percent = serializers.FloatField(help_text="Finished (done or failed) images, in percent of the total.")
    eta_seconds = serializers.IntegerField(
        allow_null=True,
        help_text="Seconds left, at the rate of the last 10-20 s (the request's current share of the "
        "workers). Null until 5% of the images (one at least) have finished, and once none is left.",
    )


class UploadResultSerializer(serializers.Serializer[ProcessingRequest]):
    """Renders the ProcessingRequest an upload created (or found by its Idempotency-Key)."""

    request_id = serializers.UUIDField(source="pk")
    status = RequestStatusField()
    status_url = AbsoluteUrlField(source="get_status_path")
    output_url = AbsoluteUrlField(source="get_output_path")
    products = serializers.IntegerField(source="products_total")
    images = serializers.IntegerField(source="images_total")


class RequestSummarySerializer(serializers.ModelSerializer[ProcessingRequest]):
    request_id = serializers.UUIDField(source="id")
    status_url = AbsoluteUrlField(source="get_status_path")
    output_url = AbsoluteUrlField(source="get_output_path")
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ProcessingRequest
        fields = [
            "request_id",
            "status",
            "original_filename",
            "created_at",
            "started_at",
            "completed_at",
            "progress",
            "bytes_in",
            "bytes_out",
            "status_url",
            "output_url",
        ]

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, obj: ProcessingRequest) -> dict[str, Any]:
        return dict(ProgressSerializer(request_progress(request=obj)).data)


# --- The status answer ------------------------------------------------------------------------

# A product's status (selectors.product_status): an image status, or `partial`.
PRODUCT_STATUSES = [*ImageStatus.values, "partial"]


@dataclass(frozen=True)
class ProductRow:
    """A product of the status answer with its images in position order."""

    product: Product
    images: list[ProductImage]

    @property
    def status(self) -> str:
        return product_status(self.images)

    @property
    def input_image_urls(self) -> list[str]:
        return [image.source_url for image in self.images]

    @property
    def output_image_urls(self) -> list[str | None]:
        return [image.output_url for image in self.images]

    @property
    def outputs(self) -> list[list[ImageOutput]] | None:
        """A request with sizes: each image's renditions, aligned with its input URLs."""
        if any(image.sized_outputs is None for image in self.images):
            return None
        return [image.sized_outputs or [] for image in self.images]

    @property
    def failed(self) -> list[ProductImage]:
        return [image for image in self.images if image.status == ImageStatus.FAILED]


@dataclass(frozen=True)
class StatusPage:
    """What RequestStatusSerializer renders: one page of a request's status."""

    request: ProcessingRequest
    progress: Progress
    # imageproc.storage.output_url_policy()
    output_urls: dict[str, Any]
    products: list[ProductRow]
    next: str | None
    previous: str | None


class ImageErrorSerializer(serializers.Serializer[ProductImage]):
    """Renders a failed ProductImage."""

    url = serializers.CharField(source="source_url")
    code = serializers.CharField(source="error_code")
    message = serializers.CharField(source="error_message")


class ImageOutputSerializer(serializers.Serializer[ImageOutput]):
    """One rendition of an image (a request with sizes)."""

    size = serializers.IntegerField(help_text="The bounding box asked, in pixels.")
    url = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    bytes = serializers.IntegerField()
    format = serializers.CharField(help_text="jpeg, webp, avif, png or gif.")


class ImageResultSerializer(serializers.Serializer[ProductImage]):
    """What the engine made of one image of a product (products.ProductImage)."""

    url = serializers.CharField(source="source_url")
    status = serializers.ChoiceField(choices=ImageStatus.choices)
    output_url = serializers.CharField(allow_null=True)
    format = BlankAsNullField(
        source="output_format",
        allow_null=True,
        help_text="The output's format: jpeg, webp, avif, or png/gif for a kept or lossless graphic.",
    )
    candidate = BlankAsNullField(
        allow_null=True,
        help_text=f"Which encoding was kept, the smallest that is not larger than the input: {', '.join(CANDIDATES)}.",
    )
    quality_chosen = serializers.IntegerField(
        allow_null=True, help_text="The encoder quality used; null for the original or a lossless output."
    )
    score = serializers.FloatField(
        allow_null=True,
        help_text="With an automatic quality: the predicted perceptual score reached (SSIMULACRA2 scale, 0-100).",
    )
    encoder = BlankAsNullField(allow_null=True, help_text="tuned, turbo, jpegli, libwebp, libaom or zlib.")
    bytes_in = serializers.IntegerField(allow_null=True)
    bytes_out = serializers.IntegerField(allow_null=True)


@extend_schema_field({**QUALITY_SCHEMA, "description": "1-95, or auto:high, auto:good, auto:eco."})
class QualityOptionField(serializers.ReadOnlyField):
    """The quality a request asked for (ProcessingRequest.quality_option)."""


class RequestOptionsSerializer(serializers.Serializer[ProcessingRequest]):
    """How a request's images are processed (RequestOptions, as stored)."""

    quality = QualityOptionField(source="quality_option")
    output_format = serializers.ChoiceField(choices=OutputFormat.choices)
    keep_copyright = serializers.BooleanField()
    sizes = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="The renditions' bounding-box edges in pixels, largest first; empty: one output per image.",
    )


class ProductStatusSerializer(serializers.Serializer[ProductRow]):
    serial_number = serializers.CharField(source="product.serial_number")
    product_name = serializers.CharField(source="product.product_name")
    status = serializers.ChoiceField(
        choices=PRODUCT_STATUSES,
        help_text="Its images' status when they agree; partial when they have all ended "
        "but some failed; processing otherwise.",
    )
    input_image_urls = serializers.ListField(child=serializers.CharField())
    output_image_urls = serializers.ListField(
        child=serializers.CharField(allow_null=True),
        help_text="Aligned with input_image_urls: null where that image is not done.",
    )
    outputs = serializers.ListField(
        child=ImageOutputSerializer(many=True),
        required=False,
        help_text="Only for a request with sizes: aligned with input_image_urls, each image's outputs, one per "
        "size, largest first (empty where that image is not done). A source no larger than a size is stored "
        "once at its own size: every such size lists that one output.",
    )
    images = ImageResultSerializer(
        many=True,
        help_text="Aligned with input_image_urls: what was made of each image (null fields until it is done).",
    )
    # Describes the answer only (never validates input), so shadowing Serializer.errors is harmless.
    errors = ImageErrorSerializer(many=True, source="failed")  # type: ignore[assignment]

    def to_representation(self, instance: ProductRow) -> dict[str, Any]:
        data = super().to_representation(instance)
        if data.get("outputs") is None:
            data.pop("outputs", None)  # a request without sizes: the answer as it always was
        return data


class OutputUrlsSerializer(serializers.Serializer[dict[str, Any]]):
    kind = serializers.ChoiceField(
        choices=["presigned", "public", "local"],
        help_text="presigned: signed S3 links that expire; public: S3 behind a CDN or public bucket, permanent; "
        "local: served by this service under /media/, permanent.",
    )
    expires_in = serializers.IntegerField(
        allow_null=True,
        help_text="Seconds the output image links of this answer stay valid; null when they do not expire.",
    )


class RequestStatusSerializer(serializers.Serializer[StatusPage]):
    """Renders a StatusPage."""

    request_id = serializers.UUIDField(source="request.pk")
    status = RequestStatusField(source="request.status")
    created_at = serializers.DateTimeField(source="request.created_at")
    started_at = serializers.DateTimeField(source="request.started_at", allow_null=True)
    completed_at = serializers.DateTimeField(source="request.completed_at", allow_null=True)
    progress = ProgressSerializer()
    bytes_in = serializers.IntegerField(source="request.bytes_in")
    bytes_out = serializers.IntegerField(source="request.bytes_out")
    output_url = AbsoluteUrlField(source="request.get_output_path")
    output_urls = OutputUrlsSerializer(help_text="How long the output image links stay valid.")
    products_count = serializers.IntegerField(source="request.products_total")
    options = RequestOptionsSerializer(source="request", help_text="The options the images are processed with.")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    products = ProductStatusSerializer(many=True)


# --- Actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requeued:
    """What RetryResultSerializer renders."""

    request: ProcessingRequest
    images_requeued: int


class RetryResultSerializer(serializers.Serializer[Requeued]):
    request_id = serializers.UUIDField(source="request.pk")
    status = RequestStatusField(source="request.status")
    images_requeued = serializers.IntegerField()


class WebhookResendResultSerializer(serializers.Serializer[WebhookDelivery]):
    """Renders the WebhookDelivery a resend queued."""

    request_id = serializers.UUIDField()
    delivery_id = serializers.UUIDField(
        source="pk", help_text="The attempt queued (the delivery log has one row per attempt)."
    )
    event_id = serializers.CharField(help_text="The webhook-id header: the same for every attempt of the event.")
    attempt = serializers.IntegerField()
    status = serializers.ChoiceField(choices=WebhookStatus.choices, help_text="The attempt's state.")
    url = serializers.URLField()
