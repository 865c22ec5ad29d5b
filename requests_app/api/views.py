"""The client API: upload a CSV, follow its status, download the output CSV.

Views are thin: a serializer validates the input, one service does the work, and domain
errors become HTTP answers in `exception_handler`.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from imageproc.engine import csv_io
from imageproc.storage import absolute_url, output_url_policy
from requests_app.models import ApiKey, OutputFormat, ProcessingRequest
from requests_app.selectors import PageOutOfRange, product_page, product_status, request_output_rows, request_progress
from requests_app.services import webhooks
from requests_app.services.errors import RequestNotFinished, ServiceError
from requests_app.services.requests import RequestOptions, request_create, request_retry_failed

STATUS_PAGE_SIZE = 100
# Room for the multipart envelope and the other fields around the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
# ProcessingRequest.idempotency_key is a 255-character column.
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY_RE = re.compile(rf"[\x20-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")


class UploadSerializer(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="The product CSV: S. No., Product Name, Input Image Urls.")
    webhook_url = serializers.CharField(required=False, allow_blank=True, max_length=2048)
    quality = serializers.IntegerField(required=False, min_value=1, max_value=95)
    output_format = serializers.ChoiceField(choices=OutputFormat.choices, default=OutputFormat.JPEG)

    def validate_webhook_url(self, value: str) -> str:
        if value:
            # The SSRF guard at save (private addresses, https); fetch.post applies it again at send.
            try:
                webhooks.webhook_url_check(value)
            except webhooks.WebhookUrlInvalid as exc:
                raise serializers.ValidationError(str(exc)) from None
        return value


class UploadResultSerializer(serializers.Serializer[Any]):
    request_id = serializers.UUIDField()
    status = serializers.CharField()
    status_url = serializers.URLField()
    output_url = serializers.URLField()
    products = serializers.IntegerField()
    images = serializers.IntegerField()


class ProgressSerializer(serializers.Serializer[Any]):
    images_total = serializers.IntegerField()
    images_done = serializers.IntegerField(help_text="Images compressed and stored.")
    images_failed = serializers.IntegerField()
    percent = serializers.FloatField(help_text="Finished (done or failed) images, in percent of the total.")


class RequestSummarySerializer(serializers.ModelSerializer[ProcessingRequest]):
    request_id = serializers.UUIDField(source="id")
    status_url = serializers.SerializerMethodField()
    output_url = serializers.SerializerMethodField()
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

    def get_status_url(self, obj: ProcessingRequest) -> str:
        return absolute_url(obj.get_status_path())

    def get_output_url(self, obj: ProcessingRequest) -> str:
        return absolute_url(obj.get_output_path())

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, obj: ProcessingRequest) -> dict[str, Any]:
        return request_progress(request=obj).as_counts()


class ImageErrorSerializer(serializers.Serializer[Any]):
    url = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()


class ProductStatusSerializer(serializers.Serializer[Any]):
    serial_number = serializers.CharField()
    product_name = serializers.CharField()
    status = serializers.CharField(help_text="pending, processing, done, failed or partial.")
    input_image_urls = serializers.ListField(child=serializers.CharField())
    output_image_urls = serializers.ListField(child=serializers.CharField(allow_null=True))
    # Describes the answer only (never validates input), so shadowing Serializer.errors is harmless.
    errors = ImageErrorSerializer(many=True)  # type: ignore[assignment]


class OutputUrlsSerializer(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(
        choices=["presigned", "public", "local"],
        help_text="presigned: signed S3 links that expire; public: S3 behind a CDN or public bucket, permanent; "
        "local: served by this service under /media/, permanent.",
    )
    expires_in = serializers.IntegerField(
        allow_null=True,
        help_text="Seconds the output image links of this answer stay valid; null when they do not expire.",
    )


class RequestStatusSerializer(serializers.Serializer[Any]):
    request_id = serializers.UUIDField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    progress = ProgressSerializer()
    bytes_in = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    output_url = serializers.URLField()
    output_urls = OutputUrlsSerializer(help_text="How long the output image links stay valid.")
    products_count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    products = ProductStatusSerializer(many=True)


class WebhookResendResultSerializer(serializers.Serializer[Any]):
    request_id = serializers.UUIDField()
    delivery_id = serializers.UUIDField(help_text="The attempt queued (the delivery log has one row per attempt).")
    event_id = serializers.CharField(help_text="The webhook-id header: the same for every attempt of the event.")
    attempt = serializers.IntegerField()
    status = serializers.CharField(help_text="pending, succeeded, failed or disabled.")
    url = serializers.URLField()


class NoInputSerializer(serializers.Serializer[Any]):
    """An action that takes no input."""


class RetryResultSerializer(serializers.Serializer[Any]):
    request_id = serializers.UUIDField()
    status = serializers.CharField()
    images_requeued = serializers.IntegerField()


class CsvErrorSerializer(serializers.Serializer[Any]):
    error = serializers.CharField()
    detail = serializers.CharField()
    errors = serializers.ListField(child=serializers.DictField(), required=False)  # type: ignore[assignment]
    errors_total = serializers.IntegerField(required=False)


class ErrorSerializer(serializers.Serializer[Any]):
    """A refusal: DRF's own answers carry only `detail`; the service's also carry `error`."""

    detail = serializers.CharField()
    error = serializers.CharField(required=False, help_text="A machine-readable code, e.g. too_many_active_requests.")


# A 400 from the upload is either a CSV problem or a problem with a form field or header,
# listed under its name: {"quality": ["..."]}. anyOf, not oneOf: a body may fit both shapes.
UPLOAD_400_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"$ref": "#/components/schemas/CsvError"},
        {
            "type": "object",
            "description": "Field errors: each invalid field (or header) with its messages.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    ]
}


class UploadThrottle(SimpleRateThrottle):
    """Uploads per API key at settings.UPLOAD_THROTTLE_RATE (per user for an admin session).

    Keyed by the key's id rather than the client, as the issue asks: a client that needs more
    can be given a second key, and one leaked key cannot exhaust the others. DRF throttles
    are not atomic (read, then write the cache): this limits abuse, it is not a quota.
    """

    scope = "uploads"

    def get_rate(self) -> str | None:
        # Read per request, not once at import like DRF's THROTTLE_RATES, so that the
        # setting is the one source (settings/base.py validates it at start-up).
        return settings.UPLOAD_THROTTLE_RATE or None

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class StrictPageNumberPagination(PageNumberPagination):
    """`?page=` must be a page number: DRF would read an empty or missing value as page 1,
    which is fine when the parameter is absent but hides a client's bug when it is empty."""

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        value = request.query_params.get(self.page_query_param)
        if value is None:
            return 1
        return value  # Paginator.validate_number refuses "" and non-numbers: 404 Invalid page.


# What any authenticated endpoint may answer besides its own codes (documented for clients
# and for schemathesis' status-code conformance check).
AUTH_RESPONSES: dict[int, OpenApiResponse] = {
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or an invalid or revoked API key."),
}
NOT_FOUND_RESPONSES: dict[int, OpenApiResponse] = {
    404: OpenApiResponse(ErrorSerializer, description="No such request for this client (or no such page)."),
}


class ProcessingRequestViewSet(viewsets.GenericViewSet[ProcessingRequest]):
    """Requests of the authenticated client. Every query filters by owner, so another
    client's request id answers 404, exactly like an unknown one."""

    lookup_value_regex = "[0-9a-fA-F-]{32,36}"
    pagination_class = StrictPageNumberPagination

    def get_queryset(self) -> QuerySet[ProcessingRequest]:
        # IsAuthenticated has run: the user is a real one.
        return ProcessingRequest.objects.filter(owner_id=self.request.user.pk).order_by("-created_at")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action == "upload":
            return UploadSerializer
        if self.action == "retry":
            # No input: the browsable API then shows a bare POST button, not a summary's fields.
            return NoInputSerializer
        return RequestSummarySerializer

    def get_throttles(self) -> list[Any]:
        if self.action == "upload":
            return [UploadThrottle()]
        return super().get_throttles()

    def get_object(self) -> ProcessingRequest:
        try:
            return self.get_queryset().get(pk=self.kwargs["pk"])
        except (ProcessingRequest.DoesNotExist, ValueError, serializers.ValidationError, DjangoValidationError):
            # The URL pattern lets through 32-36 hex digits and dashes that are not all UUIDs
            # ("--ab.."): the UUID field then raises Django's ValidationError (found by schemathesis).
            raise NotFound("No such request.") from None

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description=f"At most {IDEMPOTENCY_KEY_MAX} printable ASCII characters.",
            ),
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429],
                description="Seconds until the upload throttle lets this key upload again.",
            ),
        ],
        responses={
            202: UploadResultSerializer,
            200: OpenApiResponse(UploadResultSerializer, description="The request this Idempotency-Key created."),
            400: OpenApiResponse(UPLOAD_400_SCHEMA, description="An invalid CSV, form field or header."),
            413: CsvErrorSerializer,
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many uploads with this key (UPLOAD_THROTTLE_RATE; see Retry-After), or too many "
                "requests of this client in progress (MAX_ACTIVE_REQUESTS_PER_CLIENT).",
            ),
            **AUTH_RESPONSES,
        },
    )
    def upload(self, request: Request) -> Response:
        """Upload a product CSV. Answers at once with the request id; images are processed
        in the background."""
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # as Django reads it: a garbage length is an empty body, never a 500
        if length > settings.CSV_MAX_BYTES + UPLOAD_OVERHEAD_BYTES:
            # Refuse before Django reads (and spools to disk) a huge body.
            raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
            # The column holds 255 characters: PostgreSQL would refuse a longer one with a 500.
            raise serializers.ValidationError(
                {"Idempotency-Key": [f"At most {IDEMPOTENCY_KEY_MAX} printable ASCII characters."]}
            )
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["file"]
        if upload.size is not None and upload.size > settings.CSV_MAX_BYTES:
            raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)
        options = RequestOptions(
            quality=data.get("quality") or settings.IMAGE_DEFAULT_QUALITY,
            output_format=data["output_format"],
            webhook_url=data.get("webhook_url", ""),
        )
        processing_request, created = request_create(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            csv_file=upload,
            filename=upload.name or "",
            options=options,
            idempotency_key=idempotency_key,
        )
        status_url = absolute_url(processing_request.get_status_path())
        body = {
            "request_id": processing_request.pk,
            "status": processing_request.status,
            "status_url": status_url,
            "output_url": absolute_url(processing_request.get_output_path()),
            "products": processing_request.products_total,
            "images": processing_request.images_total,
        }
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(body, status=code, headers={"Location": status_url})

    @extend_schema(
        parameters=[OpenApiParameter("page", int, description="Products are paginated by 100.")],
        responses={200: RequestStatusSerializer, **AUTH_RESPONSES, **NOT_FOUND_RESPONSES},
    )
    def status(self, request: Request, pk: str) -> Response:
        """The progress of a request and its products, in row order, 100 per page."""
        obj = self.get_object()
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            raise NotFound("Invalid page.") from None
        try:
            listing = product_page(request=obj, page=page, per_page=STATUS_PAGE_SIZE)
        except PageOutOfRange:
            raise NotFound("Invalid page.") from None
        pages = listing.pages
        status_url = absolute_url(obj.get_status_path())
        body = {
            "request_id": obj.pk,
            "status": obj.status,
            "created_at": obj.created_at,
            "started_at": obj.started_at,
            "completed_at": obj.completed_at,
            "progress": request_progress(request=obj).as_counts(),
            "bytes_in": obj.bytes_in,
            "bytes_out": obj.bytes_out,
            "output_url": absolute_url(obj.get_output_path()),
            "output_urls": output_url_policy(),
            "products_count": obj.products_total,
            "next": f"{status_url}?page={page + 1}" if page < pages else None,
            "previous": f"{status_url}?page={page - 1}" if page > 1 else None,
            "products": [
                {
                    "serial_number": product.serial_number,
                    "product_name": product.product_name,
                    "status": product_status(images),
                    "input_image_urls": [i.source_url for i in images],
                    "output_image_urls": [i.output_url for i in images],
                    "errors": [
                        {"url": i.source_url, "code": i.error_code, "message": i.error_message}
                        for i in images
                        if i.status == "failed"
                    ],
                }
                for product, images in listing.rows
            ],
        }
        return Response(body)

    @extend_schema(
        parameters=[OpenApiParameter("partial", bool, description="Download before the request has finished.")],
        responses={
            (200, "text/csv"): OpenApiResponse(description="The output CSV."),
            400: OpenApiResponse(UPLOAD_400_SCHEMA["anyOf"][1], description="`partial` is not a boolean."),
            409: OpenApiResponse(ErrorSerializer, description="The request has not finished; add ?partial=1."),
            **AUTH_RESPONSES,
            **NOT_FOUND_RESPONSES,
        },
    )
    def output(self, request: Request, pk: str) -> StreamingHttpResponse | Response:
        """The output CSV: the input columns plus `Output Image Urls`, aligned with the inputs."""
        obj = self.get_object()
        partial = False
        if "partial" in request.query_params:
            # A value that is not a boolean (?partial=null) is a client's mistake: say so.
            try:
                partial = serializers.BooleanField().to_internal_value(request.query_params["partial"])
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"partial": exc.detail}) from None
        if not obj.is_finished and not partial:
            raise RequestNotFinished(
                f"The request is {obj.status}; download it once it has finished, or add ?partial=1."
            )
        rows = request_output_rows(request=obj)
        response = StreamingHttpResponse(
            (chunk.encode("utf-8") for chunk in csv_io.render_output(rows)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="output-{obj.pk}.csv"'
        return response

    @extend_schema(responses={200: RequestSummarySerializer(many=True), **AUTH_RESPONSES, **NOT_FOUND_RESPONSES})
    def list(self, request: Request) -> Response:
        """The client's requests, newest first."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RequestSummarySerializer(page, many=True).data)

    @extend_schema(
        request=None,
        responses={
            202: RetryResultSerializer,
            409: OpenApiResponse(ErrorSerializer, description="Not finished."),
            **AUTH_RESPONSES,
            **NOT_FOUND_RESPONSES,
        },
    )
    def retry(self, request: Request, pk: str) -> Response:
        """Re-queue the failed images of a finished request."""
        obj = self.get_object()
        count = request_retry_failed(request=obj)
        return Response(
            {"request_id": obj.pk, "status": obj.status, "images_requeued": count},
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": absolute_url(obj.get_status_path())},
        )

    @extend_schema(
        request=None,
        responses={
            202: WebhookResendResultSerializer,
            409: OpenApiResponse(description="The request has not finished, or it has no webhook URL."),
            **AUTH_RESPONSES,
            **NOT_FOUND_RESPONSES,
        },
    )
    def webhook_resend(self, request: Request, pk: str) -> Response:
        """Send the request's completion webhook again now (same webhook-id and body)."""
        obj = self.get_object()
        delivery = webhooks.webhook_resend(request=obj)
        if delivery is None:
            raise webhooks.WebhookNotConfigured("The request has no webhook URL, and its client no default one.")
        delivery.refresh_from_db()  # a synchronous queue (tests) has already sent it
        return Response(
            {
                "request_id": obj.pk,
                "delivery_id": delivery.pk,
                "event_id": delivery.event_id,
                "attempt": delivery.attempt,
                "status": delivery.status,
                "url": delivery.url,
            },
            status=status.HTTP_202_ACCEPTED,
        )


def schema_client_endpoints(endpoints: list[tuple[str, str, str, Any]], **kwargs: Any) -> list[Any]:
    """drf-spectacular preprocessing hook: /api/schema/ documents the client API, not the
    staff views the admin mounts under /admin/ (they reuse this viewset)."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith("/admin/")]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Domain errors as HTTP answers; everything else as DRF does it."""
    if isinstance(exc, csv_io.CsvInvalid):
        return Response(
            {
                "error": "invalid_csv",
                "detail": exc.detail,
                "errors": [{"row": e.row, "column": e.column, "message": e.message} for e in exc.errors],
                "errors_total": exc.total,
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, csv_io.CsvTooLarge):
        return Response({"error": "too_large", "detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, ServiceError):
        return Response({"error": exc.code, "detail": str(exc)}, status=exc.status_code)
    return drf_exception_handler(exc, context)
