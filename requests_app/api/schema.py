"""OpenAPI: what /api/schema/ documents beyond the serializers (settings SPECTACULAR_SETTINGS
names the hook below)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer
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


def location_header(*codes: int) -> OpenApiParameter:
    """The Location header of the answers (`codes`) that point at a request's status."""
    return OpenApiParameter(
        "Location",
        OpenApiTypes.URI,
        OpenApiParameter.HEADER,
        response=list(codes),
        description="The request's status URL (status_url).",
    )


# DRF's answer to a body that is not multipart/form-data (or a form).
UNSUPPORTED_MEDIA_TYPE_RESPONSES: dict[int, OpenApiResponse] = {
    415: OpenApiResponse(ErrorSerializer, description="The body is not multipart/form-data."),
}

_CHECK_BASE: dict[str, Any] = {
    "ok": {"type": "boolean"},
    "ms": {"type": "number", "description": "How long the check took; absent when it failed."},
    "error": {"type": "string", "description": "What failed; only when ok is false."},
}


def _check_schema(description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {**_CHECK_BASE, **properties},
        "required": ["ok"],
    }


# imageproc.health: what GET /health/ answers (a plain Django view, so drf-spectacular does
# not see it; tests/test_api.py checks its real answers against this).
HEALTH_COMPONENTS: dict[str, Any] = {
    "HealthStatusEnum": {"type": "string", "enum": ["ok", "error"]},
    "Health": {
        "type": "object",
        "properties": {
            # error (503) when the database, the storage or the broker is down.
            "status": {"$ref": "#/components/schemas/HealthStatusEnum"},
            "checks": {"$ref": "#/components/schemas/HealthChecks"},
        },
        "required": ["status", "checks"],
    },
    "HealthChecks": {
        "type": "object",
        "properties": {
            "database": {"$ref": "#/components/schemas/DatabaseCheck"},
            "storage": {"$ref": "#/components/schemas/StorageCheck"},
            "broker": {"$ref": "#/components/schemas/BrokerCheck"},
            "workers": {"$ref": "#/components/schemas/WorkersCheck"},
        },
        "required": ["database", "storage", "broker", "workers"],
    },
    "DatabaseCheck": _check_schema("A query (SQL) or a ping (MongoDB)."),
    "StorageCheck": _check_schema("One request to the storage.", backend={"type": "string"}),
    "BrokerCheck": _check_schema(
        "The task broker.", type={"type": "string"}, queued={"type": "integer", "description": "Tasks waiting."}
    ),
    "WorkersCheck": _check_schema(
        "The qclusters that reported in the last few seconds, on every machine.",
        broker={"type": "string"},
        queued={"type": "integer"},
        clusters={"type": "integer"},
        workers={"type": "integer"},
        hosts={"type": "array", "items": {"type": "string"}},
        details={"type": "array", "items": {"$ref": "#/components/schemas/ClusterDetail"}},
        warning={"type": "string", "description": "no running qcluster: uploads are queued, nothing processes them."},
    ),
    "ClusterDetail": {
        "type": "object",
        "properties": {
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "status": {"type": "string"},
            "workers": {"type": "integer"},
            "uptime": {"type": "integer", "description": "Seconds."},
        },
        "required": ["host", "pid", "status", "workers", "uptime"],
    },
}

_HEALTH_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
HEALTH_PATH: dict[str, Any] = {
    "get": {
        "operationId": "health_retrieve",
        "summary": "The state of the service",
        "description": "The database, the storage, the task broker and the workers. No authentication.",
        "tags": ["health"],
        "security": [{}],
        "responses": {
            "200": {"content": _HEALTH_CONTENT, "description": "The database, the storage and the broker are up."},
            "503": {"content": _HEALTH_CONTENT, "description": "The database, the storage or the broker is down."},
        },
    }
}


def schema_health(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: documents GET /health/ (imageproc.health), a plain
    Django view that drf-spectacular does not see."""
    result.setdefault("paths", {})["/health/"] = HEALTH_PATH
    result.setdefault("components", {}).setdefault("schemas", {}).update(HEALTH_COMPONENTS)
    return result
