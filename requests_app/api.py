"""The client API: upload a CSV, follow its status, download the output CSV.

Views are thin: a serializer validates the input, one service does the work, and domain
errors become HTTP answers in `exception_handler`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from imageproc.fetch import InvalidUrl, validate_url
from imageproc.storage import absolute_url
from products.models import Product
from requests_app import csv_io, services
from requests_app.models import OutputFormat, ProcessingRequest

STATUS_PAGE_SIZE = 100
# Room for the multipart envelope and the other fields around the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


class UploadSerializer(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="The product CSV: S. No., Product Name, Input Image Urls.")
    webhook_url = serializers.CharField(required=False, allow_blank=True, max_length=2048)
    quality = serializers.IntegerField(required=False, min_value=1, max_value=95)
    output_format = serializers.ChoiceField(choices=OutputFormat.choices, default=OutputFormat.JPEG)

    def validate_webhook_url(self, value: str) -> str:
        if value:
            try:
                validate_url(value)
            except InvalidUrl as exc:
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
        return progress(obj)


def progress(obj: ProcessingRequest) -> dict[str, Any]:
    return {
        "images_total": obj.images_total,
        "images_done": obj.images_done,
        "images_failed": obj.images_failed,
        "percent": obj.percent,
    }


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
    products_count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    products = ProductStatusSerializer(many=True)


class RetryResultSerializer(serializers.Serializer[Any]):
    request_id = serializers.UUIDField()
    status = serializers.CharField()
    images_requeued = serializers.IntegerField()


class CsvErrorSerializer(serializers.Serializer[Any]):
    error = serializers.CharField()
    detail = serializers.CharField()
    errors = serializers.ListField(child=serializers.DictField(), required=False)  # type: ignore[assignment]
    errors_total = serializers.IntegerField(required=False)


def _product_status(images: list[dict[str, Any]]) -> str:
    states: set[str] = {image["status"] for image in images}
    if len(states) == 1:
        return states.pop()
    if states <= {"done", "failed"}:
        return "partial"
    return "processing"


class UploadThrottle(ScopedRateThrottle):
    scope_attr = "throttle_scope"


class ProcessingRequestViewSet(viewsets.GenericViewSet[ProcessingRequest]):
    """Requests of the authenticated client. Every query filters by owner, so another
    client's request id answers 404, exactly like an unknown one."""

    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self) -> QuerySet[ProcessingRequest]:
        # IsAuthenticated has run: the user is a real one.
        return ProcessingRequest.objects.filter(owner_id=self.request.user.pk).order_by("-created_at")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action == "upload":
            return UploadSerializer
        return RequestSummarySerializer

    def get_parsers(self) -> list[Any]:
        if getattr(self, "action", None) == "upload" or self.request is None:
            return [MultiPartParser(), FormParser()]
        return super().get_parsers()

    def get_throttles(self) -> list[Any]:
        if self.action == "upload":
            self.throttle_scope = "uploads"
            return [UploadThrottle()]
        return super().get_throttles()

    def get_object(self) -> ProcessingRequest:
        try:
            return self.get_queryset().get(pk=self.kwargs["pk"])
        except (ProcessingRequest.DoesNotExist, ValueError, serializers.ValidationError):
            raise NotFound("No such request.") from None

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={
            202: UploadResultSerializer,
            200: OpenApiResponse(UploadResultSerializer, description="The request this Idempotency-Key created."),
            400: CsvErrorSerializer,
            413: CsvErrorSerializer,
        },
    )
    def upload(self, request: Request) -> Response:
        """Upload a product CSV. Answers at once with the request id; images are processed
        in the background."""
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.CSV_MAX_BYTES + UPLOAD_OVERHEAD_BYTES:
            # Refuse before Django reads (and spools to disk) a huge body.
            raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["file"]
        if upload.size is not None and upload.size > settings.CSV_MAX_BYTES:
            raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)
        options = services.RequestOptions(
            quality=data.get("quality") or settings.IMAGE_DEFAULT_QUALITY,
            output_format=data["output_format"],
            webhook_url=data.get("webhook_url", ""),
        )
        processing_request, created = services.request_create(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            csv_file=upload,
            filename=upload.name or "",
            options=options,
            idempotency_key=request.headers.get("Idempotency-Key") or None,
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
        responses={200: RequestStatusSerializer},
    )
    def status(self, request: Request, pk: str) -> Response:
        """The progress of a request and its products, in row order, 100 per page."""
        obj = self.get_object()
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            raise NotFound("Invalid page.") from None
        pages = max(1, -(-obj.products_total // STATUS_PAGE_SIZE))
        if page < 1 or page > pages:
            raise NotFound("Invalid page.")
        start = (page - 1) * STATUS_PAGE_SIZE
        products = list(
            Product.objects.filter(request_id=obj.pk, position__gte=start, position__lt=start + STATUS_PAGE_SIZE)
            .order_by("position")
            .values_list("id", "serial_number", "product_name")
        )
        images = services.images_by_product([p[0] for p in products])
        status_url = absolute_url(obj.get_status_path())
        body = {
            "request_id": obj.pk,
            "status": obj.status,
            "created_at": obj.created_at,
            "started_at": obj.started_at,
            "completed_at": obj.completed_at,
            "progress": progress(obj),
            "bytes_in": obj.bytes_in,
            "bytes_out": obj.bytes_out,
            "output_url": absolute_url(obj.get_output_path()),
            "products_count": obj.products_total,
            "next": f"{status_url}?page={page + 1}" if page < pages else None,
            "previous": f"{status_url}?page={page - 1}" if page > 1 else None,
            "products": [
                {
                    "serial_number": serial,
                    "product_name": name,
                    "status": _product_status(images.get(product_id, [])),
                    "input_image_urls": [i["source_url"] for i in images.get(product_id, [])],
                    "output_image_urls": [i["output_url"] for i in images.get(product_id, [])],
                    "errors": [
                        {"url": i["source_url"], "code": i["error_code"], "message": i["error_message"]}
                        for i in images.get(product_id, [])
                        if i["status"] == "failed"
                    ],
                }
                for product_id, serial, name in products
            ],
        }
        return Response(body)

    @extend_schema(
        parameters=[OpenApiParameter("partial", bool, description="Download before the request has finished.")],
        responses={
            (200, "text/csv"): OpenApiResponse(description="The output CSV."),
            409: OpenApiResponse(description="The request has not finished; add ?partial=1."),
        },
    )
    def output(self, request: Request, pk: str) -> StreamingHttpResponse | Response:
        """The output CSV: the input columns plus `Output Image Urls`, aligned with the inputs."""
        obj = self.get_object()
        partial = request.query_params.get("partial", "").lower() in ("1", "true", "yes")
        if not obj.is_finished and not partial:
            raise services.RequestNotFinished(
                f"The request is {obj.status}; download it once it has finished, or add ?partial=1."
            )
        rows = services.request_output_rows(request=obj)
        response = StreamingHttpResponse(
            (chunk.encode("utf-8") for chunk in csv_io.render_output(rows)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="output-{obj.pk}.csv"'
        return response

    @extend_schema(responses={200: RequestSummarySerializer(many=True)})
    def list(self, request: Request) -> Response:
        """The client's requests, newest first."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RequestSummarySerializer(page, many=True).data)

    @extend_schema(
        request=None, responses={202: RetryResultSerializer, 409: OpenApiResponse(description="Not finished.")}
    )
    def retry(self, request: Request, pk: str) -> Response:
        """Re-queue the failed images of a finished request."""
        obj = self.get_object()
        count = services.request_retry_failed(request=obj)
        return Response(
            {"request_id": obj.pk, "status": obj.status, "images_requeued": count},
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": absolute_url(obj.get_status_path())},
        )


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
    if isinstance(exc, services.ServiceError):
        return Response({"error": exc.code, "detail": str(exc)}, status=exc.status_code)
    return drf_exception_handler(exc, context)
