"""The one place where domain errors become HTTP answers (settings REST_FRAMEWORK's
EXCEPTION_HANDLER), and the serializers that document and render those answers.

    csv_io.CsvInvalid      400 {"error": "invalid_csv", "detail", "errors": [{row, column, message}], "errors_total"}
    csv_io.CsvTooLarge     413 {"error": "too_large", "detail"}
    InvalidOptions         400 {"<field>": ["<message>", ...]}, as DRF answers for a form field
    any other ServiceError its status_code, {"error": <code>, "detail"}
    anything else          as DRF answers it ({"detail"}, or field errors)
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from imageproc.engine import csv_io
from requests_app.services.errors import InvalidOptions, ServiceError

# RowError.column of a problem with the upload's `file` form field itself (missing, or not
# a file); the CSV's own problems name one of its columns, or null for the file as a whole.
FILE_FIELD = "file"


class RowErrorSerializer(serializers.Serializer[csv_io.RowError]):
    """Renders a csv_io.RowError."""

    row = serializers.IntegerField(
        allow_null=True, help_text="The spreadsheet row (the header is row 1); null for the file as a whole."
    )
    column = serializers.CharField(
        allow_null=True,
        help_text='The CSV column ("S. No.", "Product Name", "Input Image Urls"); null for the file as a whole; '
        '"file" when the form field `file` is missing or is not a file.',
    )
    message = serializers.CharField()


class CsvErrorSerializer(serializers.Serializer[csv_io.CsvInvalid]):
    """Renders a csv_io.CsvInvalid: every upload whose file cannot be accepted, an empty
    file and a missing `file` field included."""

    error = serializers.SerializerMethodField(help_text="Always invalid_csv.")
    detail = serializers.CharField(help_text="One sentence that sums the problems up.")
    # Describes the answer only (never validates input), so shadowing Serializer.errors is harmless.
    errors = RowErrorSerializer(  # type: ignore[assignment]
        many=True, help_text="The problems found, in file order (the first 100)."
    )
    errors_total = serializers.IntegerField(source="total", help_text="How many problems were found in all.")

    def get_error(self, exc: csv_io.CsvInvalid) -> str:
        return "invalid_csv"


class ErrorSerializer(serializers.Serializer[Any]):
    """A refusal: DRF's own answers carry only `detail`; the service's also carry `error`."""

    error = serializers.CharField(required=False, help_text="A machine-readable code, e.g. too_many_active_requests.")
    detail = serializers.CharField()


def file_field_invalid(messages: list[Any]) -> csv_io.CsvInvalid:
    """The upload's `file` field is missing or is not a file: answered as an invalid CSV, so
    that every problem with the uploaded file has one shape."""
    return csv_io.CsvInvalid([csv_io.RowError(None, FILE_FIELD, str(message)) for message in messages])


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Domain errors as HTTP answers; everything else as DRF does it."""
    if isinstance(exc, csv_io.CsvInvalid):
        return Response(CsvErrorSerializer(exc).data, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, csv_io.CsvTooLarge):
        body = ErrorSerializer({"error": "too_large", "detail": str(exc)}).data
        return Response(body, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, InvalidOptions):
        return Response(exc.errors, status=exc.status_code)
    if isinstance(exc, ServiceError):
        return Response(ErrorSerializer({"error": exc.code, "detail": str(exc)}).data, status=exc.status_code)
    return drf_exception_handler(exc, context)
