"""OpenAPI: what /api/schema/ documents beyond the serializers (settings SPECTACULAR_SETTINGS
names the hook below)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

from requests_app.api.errors import CsvErrorSerializer, ErrorSerializer

FIELD_ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Field errors: each invalid field (or header) with its messages.",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}


class FieldErrorsSerializer(serializers.Serializer[Any]):
    """Documents DRF's (and InvalidOptions') field errors: {"quality": ["..."]}."""


class FieldErrorsSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return FIELD_ERRORS_SCHEMA


# A 400 from the upload is either a problem with the file (CsvError: an invalid CSV, an empty
# file, or no file at all) or a problem with another form field or header, listed under its
# name. One or the other: a CsvError's `error` is a string, never a list of messages.
UPLOAD_400 = OpenApiResponse(
    PolymorphicProxySerializer(
        component_name="UploadError",
        serializers=[CsvErrorSerializer, FieldErrorsSerializer],
        resource_type_field_name=None,
    ),
    description="An invalid CSV, an empty file or no file at all (CsvError), or an invalid form field or header "
    "(FieldErrors).",
)

# What any authenticated endpoint may answer besides its own codes (documented for clients
# and for schemathesis' status-code conformance check).
AUTH_RESPONSES: dict[int, OpenApiResponse] = {
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or an invalid or revoked API key."),
}
NOT_FOUND_RESPONSES: dict[int, OpenApiResponse] = {
    404: OpenApiResponse(ErrorSerializer, description="No such request for this client (or no such page)."),
}


def schema_client_endpoints(endpoints: list[tuple[str, str, str, Any]], **kwargs: Any) -> list[Any]:
    """drf-spectacular preprocessing hook: /api/schema/ documents the client API, not the
    staff views the admin mounts under /admin/ (they reuse the client's viewset)."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith("/admin/")]
