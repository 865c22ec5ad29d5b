"""The client API: upload a CSV, follow its status, download the output CSV.

Views are thin: a serializer parses the input, one service or selector does the work, an
output serializer renders the answer, and domain errors become HTTP answers in one place
(requests_app.api.errors).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import MethodNotAllowed, NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from imageproc.engine import csv_io
from imageproc.storage import absolute_url, output_url_policy
from requests_app.api.errors import ErrorSerializer, file_field_invalid
from requests_app.api.pagination import StrictPageNumberPagination, page_url
from requests_app.api.schema import (
    AUTH_RESPONSES,
    FIELD_ERRORS_SCHEMA,
    NOT_FOUND_RESPONSES,
    UNSUPPORTED_MEDIA_TYPE_RESPONSES,
    UPLOAD_400,
    location_header,
)
from requests_app.api.serializers import (
    NoInputSerializer,
    ProductRow,
    RequestStatusSerializer,
    RequestSummarySerializer,
    Requeued,
    RetryResultSerializer,
    StatusPage,
    UploadResultSerializer,
    UploadSerializer,
    WebhookResendResultSerializer,
)
from requests_app.api.throttling import UploadThrottle
from requests_app.models import ProcessingRequest
from requests_app.selectors import (
    DIALECT_ORIGINAL,
    OUTPUT_DIALECTS,
    PageOutOfRange,
    product_page,
    request_output_csv,
    request_progress,
)
from requests_app.services import webhooks
from requests_app.services.errors import RequestNotFinished
from requests_app.services.requests import RequestOptions, request_create, request_retry_failed

STATUS_PAGE_SIZE = 100
# Room for the multipart envelope and the other fields around the file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
# ProcessingRequest.idempotency_key is a 255-character column.
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY_RE = re.compile(rf"[\x20-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")
# The form fields that RequestOptions takes as they are.
OPTION_FIELDS = ("quality", "output_format", "keep_copyright", "webhook_url", "sizes")


class ProcessingRequestViewSet(viewsets.GenericViewSet[ProcessingRequest]):
    """Requests of the authenticated client. Every query filters by owner, so another
    client's request id answers 404, exactly like an unknown one."""

    pagination_class = StrictPageNumberPagination

    @property
    def allowed_methods(self) -> list[str]:
        """GET on the upload path is only the browsable API's form (upload_form), which any
        other client is refused: not advertised in `Allow`, as the schema does not list it."""
        methods: list[str] = super().allowed_methods
        if getattr(self, "action_map", {}).get("get") == "upload_form":
            methods = [method for method in methods if method not in ("GET", "HEAD")]
        return methods

    def get_queryset(self) -> QuerySet[ProcessingRequest]:
        # IsAuthenticated has run: the user is a real one.
        return ProcessingRequest.objects.filter(owner_id=self.request.user.pk).order_by("-created_at")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action in ("upload", "upload_form"):
            return UploadSerializer
        if self.action in ("retry", "webhook_resend"):
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
            # The URL pattern lets through any segment, and one that is not a UUID makes the
            # UUID field raise Django's ValidationError (found by schemathesis).
            raise NotFound("No such request.") from None

    def page_url(self, page: int) -> str:
        """This endpoint's own URL at another page (the status answer's next/previous).
        Built from the current request, so a subclass mounted elsewhere (the staff's view
        under /admin/) links to itself without rewriting anything."""
        return page_url(self.request, page)

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
            location_header(200, 202),
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
            400: UPLOAD_400,
            413: OpenApiResponse(ErrorSerializer, description="The CSV is larger than CSV_MAX_BYTES (too_large)."),
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many uploads with this key (UPLOAD_THROTTLE_RATE; see Retry-After), or too many "
                "requests of this client in progress (MAX_ACTIVE_REQUESTS_PER_CLIENT).",
            ),
            **UNSUPPORTED_MEDIA_TYPE_RESPONSES,
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
            # The HTTP body, not the CSV (request_create checks that): refused before Django
            # reads, and spools to disk, a huge body.
            raise csv_io.CsvTooLarge(settings.CSV_MAX_BYTES)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
            # The column holds 255 characters: PostgreSQL would refuse a longer one with a 500.
            raise serializers.ValidationError(
                {"Idempotency-Key": [f"At most {IDEMPOTENCY_KEY_MAX} printable ASCII characters."]}
            )
        serializer = UploadSerializer(data=request.data)
        if not serializer.is_valid():
            if "file" in serializer.errors:
                raise file_field_invalid(serializer.errors["file"])
            raise serializers.ValidationError(serializer.errors)
        data = serializer.validated_data
        upload = data["file"]
        processing_request, created = request_create(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            csv_file=upload,
            filename=upload.name or "",
            options=RequestOptions(**{name: data[name] for name in OPTION_FIELDS if name in data}),
            idempotency_key=idempotency_key,
        )
        body = UploadResultSerializer(processing_request).data
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(body, status=code, headers={"Location": body["status_url"]})

    @extend_schema(exclude=True)
    def upload_form(self, request: Request) -> Response:
        """GET /csv/upload: only the browsable API has something to show, its upload form;
        any other client is told to POST."""
        if getattr(request.accepted_renderer, "format", None) != "api":
            raise MethodNotAllowed(request.method or "GET")
        return Response({"detail": "POST the product CSV as the multipart field `file` (the form below)."})

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
        answer = StatusPage(
            request=obj,
            progress=request_progress(request=obj),
            output_urls=output_url_policy(),
            products=[ProductRow(product, images) for product, images in listing.rows],
            next=self.page_url(page + 1) if page < listing.pages else None,
            previous=self.page_url(page - 1) if page > 1 else None,
        )
        return Response(RequestStatusSerializer(answer).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("partial", bool, description="Download before the request has finished."),
            OpenApiParameter(
                "dialect",
                str,
                enum=OUTPUT_DIALECTS,
                default=DIALECT_ORIGINAL,
                description="original: the upload's encoding (UTF-8, with its byte-order mark if it had one, or "
                "Windows-1252) and delimiter; standard: UTF-8 without a byte-order mark, with commas.",
            ),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The output CSV."),
            400: OpenApiResponse(
                FIELD_ERRORS_SCHEMA, description="`partial` is not a boolean, or `dialect` not one of its values."
            ),
            409: OpenApiResponse(ErrorSerializer, description="The request has not finished; add ?partial=1."),
            **AUTH_RESPONSES,
            **NOT_FOUND_RESPONSES,
        },
    )
    def output(self, request: Request, pk: str) -> StreamingHttpResponse | Response:
        """The output CSV: every column of the upload in its place, plus `Output Image Urls`,
        aligned with the inputs; in the upload's encoding and delimiter unless
        ?dialect=standard."""
        obj = self.get_object()
        partial = False
        if "partial" in request.query_params:
            # A value that is not a boolean (?partial=null) is a client's mistake: say so.
            try:
                partial = serializers.BooleanField().to_internal_value(request.query_params["partial"])
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"partial": exc.detail}) from None
        dialect = request.query_params.get("dialect", DIALECT_ORIGINAL)
        if dialect not in OUTPUT_DIALECTS:
            raise serializers.ValidationError({"dialect": [f"One of: {', '.join(OUTPUT_DIALECTS)}."]})
        if not obj.is_finished and not partial:
            raise RequestNotFinished(
                f"The request is {obj.status}; download it once it has finished, or add ?partial=1."
            )
        output = request_output_csv(request=obj, dialect=dialect)
        response = StreamingHttpResponse(output.chunks, content_type=output.content_type)
        response["Content-Disposition"] = f'attachment; filename="output-{obj.pk}.csv"'
        return response

    @extend_schema(responses={200: RequestSummarySerializer(many=True), **AUTH_RESPONSES, **NOT_FOUND_RESPONSES})
    def list(self, request: Request) -> Response:
        """The client's requests, newest first."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RequestSummarySerializer(page, many=True).data)

    @extend_schema(
        request=None,
        parameters=[location_header(202)],
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
            RetryResultSerializer(Requeued(request=obj, images_requeued=count)).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": absolute_url(obj.get_status_path())},
        )

    @extend_schema(
        request=None,
        responses={
            202: WebhookResendResultSerializer,
            409: OpenApiResponse(
                ErrorSerializer, description="The request has not finished, or it has no webhook URL."
            ),
            **AUTH_RESPONSES,
            **NOT_FOUND_RESPONSES,
        },
    )
    def webhook_resend(self, request: Request, pk: str) -> Response:
        """Send the request's completion webhook again now (same webhook-id and body)."""
        obj = self.get_object()
        delivery = webhooks.webhook_resend(request=obj)
        delivery.refresh_from_db()  # a synchronous queue (tests) has already sent it
        return Response(WebhookResendResultSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
